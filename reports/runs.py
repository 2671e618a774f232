"""The run directories a report is built from, read once and named for display."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pandas as pd

from robench.errors import RobenchError
from robench.results import ID_COLUMNS, RunDir, read_run


@dataclass
class ReportRun:
    """One run directory with its tables loaded (samples only when a plot needs them)."""

    name: str
    run: RunDir
    manifest: Dict[str, Any]
    results: pd.DataFrame
    sanity: Optional[pd.DataFrame]
    _samples: Optional[pd.DataFrame] = field(default=None, repr=False)
    _cells: Optional[pd.DataFrame] = field(default=None, repr=False)
    _metrics: Optional[pd.DataFrame] = field(default=None, repr=False)
    worst_note: str = ""  # why the worst-case rows could not be computed, when they could not

    @property
    def samples(self) -> pd.DataFrame:
        if self._samples is None:
            self._samples = self.run.samples() if self.run.has_samples() else pd.DataFrame()
        return self._samples

    @property
    def cells(self) -> pd.DataFrame:
        """cell_id -> id columns, from the cell folders (empty when they were deleted)."""
        if self._cells is None:
            self._cells = self.run.cells()
        return self._cells

    @property
    def metrics(self) -> pd.DataFrame:
        """The results with a ``worst-case`` row per budget (see :func:`with_worst_case`)."""
        if self._metrics is None:
            self._metrics, self.worst_note = with_worst_case(self)
        return self._metrics

    def cell_of(self, row: pd.Series) -> Optional[str]:
        """The cell folder holding a results row, or None."""
        cells = self.cells
        if cells.empty:
            return None
        match = pd.Series(True, index=cells.index)
        for col in ("model", "attack", "attack_params", "eps", "threat", "objective", "detector"):
            match &= cells[col].map(_key) == _key(row.get(col))
        found = cells.loc[match, "cell_id"]
        return str(found.iloc[0]) if len(found) else None


def with_worst_case(run: ReportRun) -> Tuple[pd.DataFrame, str]:
    """``run.results`` plus the worst-case rows results.csv lacks, computed from the per-sample records.

    Rows results.csv already has are kept as they are; a group's row is computed only
    when it is missing (runs finished before results.csv carried them).

    Returns:
        The rows, and a note saying why no worst case could be computed ("" when it could).
    """
    from robench.worstcase import GROUP_COLUMNS, WORST_CASE, bounded, worst_case_rows

    results = run.results
    given = results[results["attack"] == WORST_CASE]
    if not bounded(results).any():
        return results, ""
    try:  # without records to compute from, results.csv's own rows (if any) stand alone
        if run.samples.empty:
            raise RobenchError("no per-sample records, so no worst case over the attacks")
        rows = worst_case_rows(results, run.samples, cells=run.cells)
    except RobenchError as exc:
        return results, "" if len(given) else str(exc)
    have = {tuple(_key(r[c]) for c in GROUP_COLUMNS) for _, r in given.iterrows()}
    new = rows[[tuple(_key(r[c]) for c in GROUP_COLUMNS) not in have for _, r in rows.iterrows()]]
    return (pd.concat([results, new], ignore_index=True) if len(new) else results), ""


def load_runs(paths: Sequence[str | os.PathLike]) -> List[ReportRun]:
    """Open every run first, so a bad path fails before anything is written."""
    if not paths:
        raise RobenchError("no run directories given")
    runs = [read_run(p) for p in paths]
    names = display_names([r.path for r in runs])
    out = []
    for name, run in zip(names, runs):
        results = run.results()
        missing = [c for c in ID_COLUMNS if c not in results.columns]
        if missing:
            raise RobenchError(f"{run.path}/results.csv lacks the columns {', '.join(missing)}")
        out.append(ReportRun(name, run, run.manifest(), results, run.sanity()))
    return out


def display_names(paths: Sequence[Path]) -> List[str]:
    """Short unique names: the folder name, with its parent when two runs share it."""
    resolved = [Path(p).resolve() for p in paths]
    base = [p.name or str(p) for p in resolved]
    names = [f"{p.parent.name}/{n}" if base.count(n) > 1 else n for p, n in zip(resolved, base)]
    seen: Dict[str, int] = {}
    for i, name in enumerate(names):  # the same folder given twice
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name} ({seen[name]})"
    return names


def _key(value: Any) -> str:
    """A value as comparable text: blanks and None alike, 0.3 read back from CSV equal to 0.3."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    return str(value)
