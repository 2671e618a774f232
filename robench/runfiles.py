"""Reading a run directory (layout in :mod:`robench.schema`); :class:`robench.rundir.RunDir` writes one."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pandas as pd

from robench.errors import RobenchError
from robench.io import load_npy
from robench.schema import ARRAY_SUFFIX, ID_COLUMNS, check_cell_id, read_csv, read_table, safe_name


@dataclass(frozen=True)
class FeatureSet:
    """Clean test features of one model, aligned row by row."""

    f: np.ndarray  # (N, D) float32
    y: np.ndarray  # (N,) labels
    pred: np.ndarray  # (N,) clean predictions
    index: np.ndarray  # (N,) indices into the dataset


class RunFiles:
    """Reader of one run directory's files (finished or not).

    Args:
        path: the run directory.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    @staticmethod
    def looks_like_run(path: Path) -> bool:
        return (path / "manifest.json").is_file() or (path / "cells").is_dir()

    @staticmethod
    def is_run(path: str | os.PathLike) -> bool:
        """Whether ``path`` is a finished run directory (manifest.json and results.csv)."""
        path = Path(path)
        return (path / "manifest.json").is_file() and (path / "results.csv").is_file()

    def manifest(self) -> Dict[str, Any]:
        try:
            return json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RobenchError(f"{self.path}/manifest.json: cannot read it ({exc})") from None

    def results(self) -> pd.DataFrame:
        """results.csv: one row per cell (and worst-case rows), RESULT_COLUMNS first."""
        return self._csv("results.csv")

    def samples(self, cell_id: Optional[str] = None) -> pd.DataFrame:
        """All cells' per-sample records, or one cell's (Parquet or CSV, whichever the run wrote)."""
        folder = self.path if cell_id is None else self.cell_dir(cell_id)
        return read_table(folder / "samples")

    def has_samples(self) -> bool:
        return any((self.path / f"samples.{ext}").is_file() for ext in ("parquet", "csv"))

    def timings(self) -> pd.DataFrame:
        return self._csv("timings.csv")

    def sanity(self) -> Optional[pd.DataFrame]:
        """sanity.csv (model, check, flagged, evidence) when a sanity pass wrote one, else None."""
        return self._csv("sanity.csv") if (self.path / "sanity.csv").is_file() else None

    def _csv(self, name: str) -> pd.DataFrame:
        path = self.path / name
        if not path.is_file():
            raise RobenchError(f"{path}: no such file (was the run finished?)")
        try:
            return read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise RobenchError(f"{path}: not a readable CSV ({exc})") from None

    def feature_models(self) -> List[str]:
        return sorted(p.stem for p in (self.path / "features").glob("*.npz"))

    def features(self, model: str) -> FeatureSet:
        path = self.path / "features" / f"{safe_name(model)}.npz"
        if not path.is_file():
            raise RobenchError(f"{path}: no features for model '{model}'")
        with np.load(path, allow_pickle=False) as npz:
            return FeatureSet(f=npz["f"], y=npz["y"], pred=npz["pred"], index=npz["index"])

    def cell_dir(self, cell_id: str) -> Path:
        return self.path / "cells" / check_cell_id(cell_id)

    def has_cell(self, cell_id: str) -> bool:
        return (self.cell_dir(cell_id) / "row.json").is_file()

    def cell_ids(self) -> List[str]:
        cells = self.path / "cells"
        if not cells.is_dir():
            return []
        return sorted(p.name for p in cells.iterdir() if not p.name.startswith(".")
                      and (p / "row.json").is_file())

    def cell_row(self, cell_id: str) -> Dict[str, Any]:
        return json.loads((self.cell_dir(cell_id) / "row.json").read_text(encoding="utf-8"))

    def cells(self) -> pd.DataFrame:
        """cell_id and the id columns of every finished cell (joins results rows to cell folders)."""
        rows = [{"cell_id": c, **{k: self.cell_row(c).get(k) for k in ID_COLUMNS}} for c in self.cell_ids()]
        return pd.DataFrame(rows, columns=["cell_id", *ID_COLUMNS])

    def has_adv_features(self, cell_id: str) -> bool:
        return self._array_path(cell_id, "adv_features") is not None

    def adv_features(self, cell_id: str) -> np.ndarray:
        """(N, D) features of the cell's adversarial examples, aligned with its samples rows."""
        path = self._array_path(cell_id, "adv_features")
        if path is None:
            raise RobenchError(f"cell {cell_id}: no adversarial features stored")
        return load_npy(path)

    def x_adv(self, cell_id: str) -> Optional[np.ndarray]:
        """The cell's adversarial examples, or None when the run did not store them (--no-save-adv)."""
        path = self._array_path(cell_id, "x_adv")
        return None if path is None else load_npy(path)

    def _array_path(self, cell_id: str, name: str) -> Optional[Path]:
        folder = self.cell_dir(cell_id)
        refs = folder / "arrays.json"
        if refs.is_file():
            digest = json.loads(refs.read_text(encoding="utf-8")).get(name)
            if not digest:
                return None
            path = self.path / "arrays" / f"{digest}{ARRAY_SUFFIX}"
            return path if path.is_file() else self.path / "arrays" / f"{digest}.npy"
        old = folder / f"{name}.npy"  # runs written before arrays/ existed
        return old if old.is_file() else None

    def bytes_per_cell(self) -> Dict[str, float]:
        """Disk use of the finished cells and their arrays (the storage figures of a run)."""
        cells = [p for p in (self.path / "cells").rglob("*") if p.is_file()]
        arrays = list((self.path / "arrays").glob("*.npy*")) if (self.path / "arrays").is_dir() else []
        total = sum(p.stat().st_size for p in cells + arrays)
        n = max(len(self.cell_ids()), 1)
        return {"cells": len(self.cell_ids()), "bytes": total, "bytes_per_cell": total / n}
