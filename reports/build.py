"""``robench report``: run directories in, a folder of tables, plots and index.html out."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Sequence

from robench.errors import RobenchError

from robench.reports.latex import write_latex_tables
from robench.reports.leaderboard import write_leaderboard
from robench.reports.page import render_index, report_title, run_pages
from robench.reports.plots import all_plots
from robench.reports.runs import load_runs
from robench.reports.tables import tidy_metrics, write_tables
from robench.reports.verification import write_verification


def build_report(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 feature_cells: Optional[Mapping[str, str]] = None) -> Path:
    """Build the report of one or more run directories.

    Writes ``metrics.csv`` (the results with a ``worst-case`` row per budget, computed
    from the per-sample records when results.csv lacks them), ``headline.csv`` / ``.md``,
    ``table_<threat>.csv`` / ``.md`` / ``.tex``, ``leaderboard.csv`` / ``.html``,
    ``plots/*.png``, for runs with ``robench verify`` cells ``verification.csv`` / ``.md`` /
    ``.tex`` and ``plots/verification_vs_eps.png``, and a self-contained ``index.html`` into
    ``out_dir``. Everything is
    built in a hidden staging folder first, so a failure leaves no half-written report.

    Args:
        run_dirs: finished run directories (``robench attack --out``).
        out_dir: the report folder (created; existing report files are replaced).
        feature_cells: model name -> cell_id whose adversarial examples the feature-space
            plot overlays (default: the largest-eps gray-box cell with the most successes).

    Returns:
        The path of ``index.html``.

    Raises:
        RobenchError: a path is not a run directory, or ``out_dir`` is a file.
    """
    runs = load_runs(run_dirs)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RobenchError(f"--out {out}: exists and is not a folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".robench-report-", dir=out))
    try:
        metrics = tidy_metrics(runs)
        headline, tables = write_tables(metrics, stage)
        write_latex_tables(metrics, stage)
        write_leaderboard(metrics, run_pages(runs), stage, "leaderboard: " + report_title(runs))
        plots = all_plots(runs, metrics, stage / "plots", feature_cells or {})
        verification = write_verification(metrics, stage)
        render_index(runs, headline, tables, plots, stage, verification)
        _move_into(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return out / "index.html"


def _move_into(stage: Path, out: Path) -> None:
    """Rename every staged file into place; index.html last, so it never points at missing plots."""
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == "index.html")
    for src in files:
        dest = out / src.relative_to(stage)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
