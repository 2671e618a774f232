"""The run directory: the one place its file schema is written down.

``robench attack --out RUN_DIR`` writes, and ``robench report`` reads::

    RUN_DIR/manifest.json          resolved config, versions, git hash, device, seeds, times
    RUN_DIR/results.csv            one row per cell (RESULT_COLUMNS), byte-reproducible
    RUN_DIR/samples.csv            one row per sample per cell (SAMPLE_COLUMNS)
    RUN_DIR/timings.csv            wall-clock seconds per cell (kept out of results.csv)
    RUN_DIR/sanity.csv             optional: model, check, flagged, evidence
    RUN_DIR/features/<model>.npz   clean test features: f (N, D) float32, y, pred, index (N,)
    RUN_DIR/cells/<cell_id>/       row.json, samples.csv, adv_features.npy (N, D), x_adv.npy,
                                   timing.json

A cell folder appears whole or not at all (it is staged, then renamed), so an
interrupted run can be resumed by skipping the cells already present.
``finalize()`` merges the cells into the top-level CSVs, sorted deterministically.
Every file is written atomically: a temporary file in the same folder, fsync,
then ``os.replace``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from robench.errors import RobenchError

ID_COLUMNS: List[str] = [
    "model", "defense", "dataset", "arch", "attack", "attack_params", "norm", "eps", "threat",
    "objective", "detector", "seed",
]
_FALLBACK_METRIC_COLUMNS: List[str] = [
    "clean_acc", "robust_acc", "robust_acc_lo", "robust_acc_hi", "attack_success_rate",
    "auc", "auc_lo", "auc_hi", "auc_successful", "aupr", "tpr_at_fpr1", "tpr_at_fpr5",
    "fpr_at_fpr1", "fpr_at_fpr5", "tnr_at_tpr95", "det_robust_acc_fpr1", "det_robust_acc_fpr5",
    "n", "n_successful", "mean_linf", "median_linf", "mean_l2", "median_l2",
]


def _metric_columns() -> List[str]:
    try:  # robench.metrics owns the metric names once it exists
        from robench.metrics import METRIC_COLUMNS as cols
    except ImportError:
        return list(_FALLBACK_METRIC_COLUMNS)
    return list(cols)


METRIC_COLUMNS: List[str] = _metric_columns()
# objective_wins: "ce:12;margin:30"; cascade_after: the attacks that ran before this one in a
# --cascade run ("fgsm;pgd"), whose examples this cell's rows include (its robust_acc is the worst case so far)
EXTRA_COLUMNS: List[str] = ["passes_per_sample", "objective_wins", "cascade_after"]
RESULT_COLUMNS: List[str] = ID_COLUMNS + METRIC_COLUMNS + EXTRA_COLUMNS
CELL_KEY: List[str] = ["model", "attack", "eps", "threat", "detector"]
SAMPLE_COLUMNS: List[str] = [
    "cell_id", *CELL_KEY, "index", "input_sha1", "label", "clean_pred", "adv_pred",
    "clean_score", "adv_score", "linf", "l2", "success", "flagged_fpr1", "flagged_fpr5",
]
TIMING_COLUMNS: List[str] = ["cell_id", *CELL_KEY, "seconds"]
SANITY_COLUMNS: List[str] = ["model", "check", "flagged", "evidence"]

# Columns read back as text (never as numbers or NaN), whatever their values look like.
TEXT_COLUMNS = {c for c in ID_COLUMNS if c not in ("eps", "seed")} | {
    "objective_wins", "cascade_after", "cell_id", "input_sha1", "check", "evidence"}
EXACT_FLOAT_COLUMNS = {"eps"}  # written as the shortest exact repr, so 8/255 survives a round trip
_SIGNIFICANT = 10  # metrics: enough digits for k/n with n up to 1e9, and stable across machines
_CELL_ID = re.compile(r"^[A-Za-z0-9_=+-][A-Za-z0-9._=+-]{0,199}$")


# -- atomic writes -------------------------------------------------------------------

def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text with ``\\n`` line ends, written atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Sorted-key, indented JSON; NaN and infinities become ``null``."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_write_csv(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    """``df`` as CSV with deterministic number formatting (see :func:`format_frame`)."""
    return atomic_write_text(path, csv_text(df))


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values from numpy scalars and arrays, paths, tuples, sets and NaN."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted(to_jsonable(v) for v in obj)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy arrays, torch tensors
        return to_jsonable(obj.tolist())
    return str(obj)


# -- deterministic CSV -----------------------------------------------------------------

def format_float(value: float, column: str = "") -> str:
    """One float as text: shortest exact repr for ``eps``, 10 significant digits otherwise."""
    if value is None or not math.isfinite(value):
        return ""
    value = float(value) + 0.0  # turns -0.0 into 0.0
    if column in EXACT_FLOAT_COLUMNS:
        return repr(value)
    return format(value, f".{_SIGNIFICANT}g")


def format_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell as text, so the CSV bytes depend only on the values."""
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        out[col] = [_format_cell(v, col) for v in df[col].tolist()]
    return out


def _format_cell(value: Any, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format_float(float(value), column)
    return str(value)


def csv_text(df: pd.DataFrame) -> str:
    return format_frame(df).to_csv(index=False, lineterminator="\n")


def order_columns(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``columns`` first (missing ones added empty), then any others sorted by name."""
    df = df.copy()
    for col in columns:
        if col not in df.columns:
            df[col] = np.nan
    extra = sorted(c for c in df.columns if c not in columns)
    return df[list(columns) + extra]


def sort_rows(df: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Stable sort by ``keys`` (text as text, numbers as numbers, blanks first)."""
    keys = [k for k in keys if k in df.columns]
    if not keys or df.empty:
        return df.reset_index(drop=True)
    sortable = pd.DataFrame({k: _sort_key(df[k]) for k in keys})
    order = sortable.sort_values(keys, kind="mergesort", na_position="first").index
    return df.loc[order].reset_index(drop=True)


def _sort_key(col: pd.Series) -> pd.Series:
    numeric = pd.to_numeric(col, errors="coerce")
    if col.notna().sum() == numeric.notna().sum():
        return numeric
    return col.map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))


def write_results(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """results.csv: RESULT_COLUMNS in order (then extras), rows sorted by the id columns."""
    df = sort_rows(order_columns(df, RESULT_COLUMNS), ID_COLUMNS)
    return atomic_write_csv(path, df)


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A robench CSV: text columns stay text ('' for blanks), everything else parsed by pandas."""
    header = pd.read_csv(path, nrows=0).columns
    dtypes = {c: str for c in header if c in TEXT_COLUMNS}
    df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])
    for col in dtypes:
        df[col] = df[col].fillna("")
    return df


# -- provenance -------------------------------------------------------------------------

_VERSIONED = {
    "robench": "robench", "torch": "torch", "torchvision": "torchvision",
    "torchattacks": "torchattacks", "art": "adversarial-robustness-toolbox", "numpy": "numpy",
    "pandas": "pandas", "scikit-learn": "scikit-learn",
}


def collect_versions() -> Dict[str, str]:
    """Versions of robench and its main dependencies ('unknown' when not installed); no imports."""
    import platform

    from robench import __version__

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for key, dist in _VERSIONED.items():
        try:
            out[key] = metadata.version(dist)
        except Exception:  # not installed, or broken metadata: never fail a run for this
            out[key] = "unknown"
    out["robench"] = __version__
    return out


def git_hash() -> str:
    """The commit of the robench source tree, with ``-dirty`` for local changes; else 'unknown'."""
    source = Path(__file__).resolve().parent.parent
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True,
                                  timeout=5, check=True).stdout.strip()

        top = Path(git("rev-parse", "--show-toplevel")).resolve()
        if top != source:  # robench installed inside someone else's repository
            return "unknown"
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except Exception:
        return "unknown"
    return f"{commit}-dirty" if dirty else commit or "unknown"


# -- cells --------------------------------------------------------------------------

def make_cell_id(row: Mapping[str, Any]) -> str:
    """A readable, filesystem-safe id for a result row: a slug of its key plus a hash of all ids."""
    key = json.dumps({c: to_jsonable(row.get(c)) for c in ID_COLUMNS}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    eps = row.get("eps")
    parts = [row.get("model"), row.get("attack"), f"eps{eps:g}" if isinstance(eps, (int, float)) else eps,
             row.get("threat"), row.get("detector")]
    words = (re.sub(r"[^A-Za-z0-9.=+-]+", "-", str(p)).strip("-.") for p in parts if p not in (None, ""))
    slug = "_".join(w for w in words if w)
    return f"{slug[:100]}_{digest}" if slug else digest


def check_cell_id(cell_id: str) -> str:
    if not isinstance(cell_id, str) or not _CELL_ID.match(cell_id):
        raise ValueError(f"bad cell id {cell_id!r}: use letters, digits and . _ = + - "
                         f"(not starting with '.')")
    return cell_id


def safe_name(name: str) -> str:
    """A model name as a file name (features/<name>.npz)."""
    cleaned = re.sub(r"[^A-Za-z0-9._=+-]+", "_", str(name)).lstrip(".")
    return cleaned or "_"


def _to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


@dataclass(frozen=True)
class FeatureSet:
    """Clean test features of one model, aligned row by row."""

    f: np.ndarray  # (N, D) float32
    y: np.ndarray  # (N,) labels
    pred: np.ndarray  # (N,) clean predictions
    index: np.ndarray  # (N,) indices into the dataset


# -- the run directory ------------------------------------------------------------------

_ARTIFACTS = ("manifest.json", "results.csv", "samples.csv", "timings.csv", "sanity.csv")
_FOLDERS = ("cells", "features")


class RunDir:
    """Reader and writer of one run directory.

    Args:
        path: the run directory (use :meth:`create` to make one, :func:`read_run` to open one).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- opening ------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike) -> "RunDir":
        """Make ``path`` a run directory; an existing run (finished or not) is reopened to resume.

        Raises:
            RobenchError: ``path`` is a file, or a non-empty folder that is not a run.
        """
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RobenchError(f"--out {path}: exists and is not a folder")
        if path.is_dir() and any(path.iterdir()) and not cls._looks_like_run(path):
            raise RobenchError(f"--out {path}: folder exists, is not empty and is not a robench run "
                               f"directory; choose another --out")
        (path / "cells").mkdir(parents=True, exist_ok=True)
        return cls(path)

    @staticmethod
    def _looks_like_run(path: Path) -> bool:
        return (path / "manifest.json").is_file() or (path / "cells").is_dir()

    @staticmethod
    def is_run(path: str | os.PathLike) -> bool:
        """Whether ``path`` is a finished run directory (manifest.json and results.csv)."""
        path = Path(path)
        return (path / "manifest.json").is_file() and (path / "results.csv").is_file()

    def clear(self) -> None:
        """Remove everything a run wrote here (before re-running with another configuration)."""
        for name in _ARTIFACTS:
            (self.path / name).unlink(missing_ok=True)
        for name in _FOLDERS:
            shutil.rmtree(self.path / name, ignore_errors=True)
        (self.path / "cells").mkdir(parents=True, exist_ok=True)

    # -- manifest ---------------------------------------------------------------------------
    def manifest(self) -> Dict[str, Any]:
        try:
            return json.loads((self.path / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RobenchError(f"{self.path}/manifest.json: cannot read it ({exc})") from None

    def write_manifest(self, manifest: Mapping[str, Any]) -> Path:
        return atomic_write_json(self.path / "manifest.json", manifest)

    def update_manifest(self, **fields: Any) -> Path:
        current = self.manifest() if (self.path / "manifest.json").is_file() else {}
        return self.write_manifest({**current, **fields})

    # -- top-level tables -----------------------------------------------------------------
    def results(self) -> pd.DataFrame:
        """results.csv: one row per cell, RESULT_COLUMNS first."""
        return self._csv("results.csv")

    def samples(self, cell_id: Optional[str] = None) -> pd.DataFrame:
        """samples.csv (all cells), or one cell's own samples.csv."""
        if cell_id is None:
            return self._csv("samples.csv")
        return self._csv(f"cells/{check_cell_id(cell_id)}/samples.csv")

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

    # -- features ------------------------------------------------------------------------
    def write_features(self, model: str, f: Any, y: Any, pred: Any, index: Any) -> Path:
        """Clean test features of ``model``: f (N, D) float32, y, pred and index (N,)."""
        arrays = {"f": _to_numpy(f, np.float32), "y": _to_numpy(y, np.int64),
                  "pred": _to_numpy(pred, np.int64), "index": _to_numpy(index, np.int64)}
        n = len(arrays["f"])
        if arrays["f"].ndim != 2 or any(len(a) != n or a.ndim != 1 for k, a in arrays.items() if k != "f"):
            raise ValueError(f"features of {model}: need f (N, D) and y, pred, index (N,); got "
                             f"{ {k: a.shape for k, a in arrays.items()} }")
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return atomic_write_bytes(self.path / "features" / f"{safe_name(model)}.npz", buf.getvalue())

    def feature_models(self) -> List[str]:
        return sorted(p.stem for p in (self.path / "features").glob("*.npz"))

    def features(self, model: str) -> FeatureSet:
        path = self.path / "features" / f"{safe_name(model)}.npz"
        if not path.is_file():
            raise RobenchError(f"{path}: no features for model '{model}'")
        with np.load(path, allow_pickle=False) as npz:
            return FeatureSet(f=npz["f"], y=npz["y"], pred=npz["pred"], index=npz["index"])

    # -- cells ------------------------------------------------------------------------------
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

    def adv_features(self, cell_id: str) -> np.ndarray:
        """(N, D) features of the cell's adversarial examples, aligned with its samples rows."""
        return np.load(self.cell_dir(cell_id) / "adv_features.npy", allow_pickle=False)

    def x_adv(self, cell_id: str) -> Optional[np.ndarray]:
        path = self.cell_dir(cell_id) / "x_adv.npy"
        return np.load(path, allow_pickle=False) if path.is_file() else None

    def write_cell(self, cell_id: str, row: Mapping[str, Any], samples: pd.DataFrame,
                   adv_features: Any, x_adv: Any = None, seconds: Optional[float] = None) -> Path:
        """Write one cell whole: staged in a hidden folder, then renamed into ``cells/<cell_id>``.

        Args:
            cell_id: the cell's folder name (see :func:`make_cell_id`).
            row: its results row (id columns required; missing metrics are left blank).
            samples: one row per attacked point (SAMPLE_COLUMNS; key columns filled from ``row``).
            adv_features: (N, D) features of the adversarial examples, in the order of ``samples``.
            x_adv: the adversarial examples (N, C, H, W), or None to skip storing them.
            seconds: wall-clock time of the cell, for timings.csv.
        """
        final = self.cell_dir(cell_id)
        row = {**to_jsonable(dict(row)), "cell_id": cell_id}
        missing = [c for c in ID_COLUMNS if c not in row]
        if missing:
            raise ValueError(f"cell {cell_id}: the row lacks id columns {', '.join(missing)}")
        samples = self._cell_samples(cell_id, row, samples)
        feats = _to_numpy(adv_features, np.float32)
        if feats.ndim != 2 or len(feats) != len(samples):
            raise ValueError(f"cell {cell_id}: adv_features {feats.shape} do not match "
                             f"{len(samples)} samples")
        stage = Path(tempfile.mkdtemp(prefix=f".{cell_id}.", dir=final.parent))
        try:
            atomic_write_csv(stage / "samples.csv", samples)
            atomic_write_bytes(stage / "adv_features.npy", _npy_bytes(feats))
            if x_adv is not None:
                atomic_write_bytes(stage / "x_adv.npy", _npy_bytes(_to_numpy(x_adv, np.float32)))
            if seconds is not None:
                atomic_write_json(stage / "timing.json", {"seconds": seconds})
            atomic_write_json(stage / "row.json", row)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(stage, final)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        _fsync_dir(final.parent)
        return final

    @staticmethod
    def _cell_samples(cell_id: str, row: Mapping[str, Any], samples: pd.DataFrame) -> pd.DataFrame:
        samples = samples.copy()
        samples["cell_id"] = cell_id
        for col in CELL_KEY:
            if col not in samples.columns:
                samples[col] = row[col]
        return order_columns(samples, SAMPLE_COLUMNS)

    def write_timing(self, cell_id: str, seconds: float) -> Path:
        """Record the wall-clock time of a finished cell (kept out of results.csv)."""
        return atomic_write_json(self.cell_dir(cell_id) / "timing.json", {"seconds": seconds})

    # -- finishing ---------------------------------------------------------------------
    def finalize(self) -> pd.DataFrame:
        """Merge every cell into results.csv, samples.csv and timings.csv; return the results."""
        ids = self.cell_ids()
        rows = [self.cell_row(c) for c in ids]
        results = pd.DataFrame(rows).drop(columns="cell_id", errors="ignore") if rows else pd.DataFrame()
        write_results(results, self.path / "results.csv")
        order = {c: i for i, c in enumerate(self._cell_order(rows))}
        parts = [self.samples(c) for c in ids]
        samples = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SAMPLE_COLUMNS)
        samples = order_columns(samples, SAMPLE_COLUMNS)
        samples["_order"] = samples["cell_id"].map(order)
        samples = sort_rows(samples, ["_order", "index"]).drop(columns="_order")
        atomic_write_csv(self.path / "samples.csv", samples)
        atomic_write_csv(self.path / "timings.csv", self._timings(rows))
        return self.results()

    @staticmethod
    def _cell_order(rows: List[Dict[str, Any]]) -> List[str]:
        df = pd.DataFrame(rows, columns=["cell_id", *ID_COLUMNS])
        return sort_rows(df, ID_COLUMNS + ["cell_id"])["cell_id"].tolist()

    def _timings(self, rows: List[Dict[str, Any]]) -> pd.DataFrame:
        out = []
        for row in rows:
            path = self.cell_dir(row["cell_id"]) / "timing.json"
            seconds = json.loads(path.read_text()).get("seconds") if path.is_file() else None
            out.append({**{k: row.get(k) for k in ["cell_id", *CELL_KEY]}, "seconds": seconds})
        df = pd.DataFrame(out, columns=TIMING_COLUMNS)
        return sort_rows(df, CELL_KEY + ["cell_id"])


def read_run(path: str | os.PathLike) -> RunDir:
    """Open a finished run directory.

    Raises:
        RobenchError: ``path`` has no manifest.json or no results.csv.
    """
    if not RunDir.is_run(path):
        hint = ""
        if (Path(path) / "manifest.json").is_file():
            hint = "; it has a manifest but was never finished"
        raise RobenchError(f"{path} is not a robench run directory (no manifest.json / results.csv){hint}")
    return RunDir(path)


__all__ = [
    "ID_COLUMNS", "METRIC_COLUMNS", "EXTRA_COLUMNS", "RESULT_COLUMNS", "SAMPLE_COLUMNS",
    "TIMING_COLUMNS", "SANITY_COLUMNS", "CELL_KEY", "FeatureSet", "RunDir", "read_run",
    "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_csv",
    "write_results", "read_csv", "csv_text", "collect_versions", "git_hash", "make_cell_id",
]
