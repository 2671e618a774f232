"""Files robench writes: one atomic writer, JSON values, deterministic CSV text.

Every file is written through :func:`atomic_write`: a temporary file in the same
folder, fsync, the permissions the user's umask gives a new file (``mkstemp``
alone would leave it private to its owner), then ``os.replace``. Killed at any
moment, the path holds the old file, nothing, or the whole new one.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Collection, Mapping, Sequence

import numpy as np
import pandas as pd

SIGNIFICANT = 10  # metrics: enough digits for k/n with n up to 1e9, and stable across machines


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fh)`` on a temporary file next to ``path``, then move it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """UTF-8 text with ``\\n`` line ends, written atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Sorted-key, indented JSON; NaN and infinities become ``null``."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def atomic_write_csv(path: str | os.PathLike, df: pd.DataFrame,
                     exact: Collection[str] = ("eps",)) -> Path:
    """``df`` as CSV with deterministic number formatting (see :func:`format_frame`)."""
    return atomic_write_text(path, csv_text(df, exact))


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); best effort elsewhere."""
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


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    """gzip at level 1 with no timestamp: the same data always gives the same bytes (resumes stay
    byte-identical); adversarial examples compress about 4x (pixels at 0/1 and at x +- eps)."""
    return gzip.compress(data, compresslevel=1, mtime=0)


def load_npy(path: Path) -> np.ndarray:
    """An array written by ``np.save``, plain (``.npy``) or gzip-compressed (``.npy.gz``)."""
    if path.name.endswith(".gz"):
        return np.load(io.BytesIO(gzip.decompress(path.read_bytes())), allow_pickle=False)
    return np.load(path, allow_pickle=False)


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


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

def format_float(value: float, exact: bool = False) -> str:
    """One float as text: the shortest exact repr when ``exact``, else 10 significant digits."""
    if value is None or not math.isfinite(value):
        return ""
    value = float(value) + 0.0  # turns -0.0 into 0.0
    return repr(value) if exact else format(value, f".{SIGNIFICANT}g")


def format_frame(df: pd.DataFrame, exact: Collection[str] = ("eps",)) -> pd.DataFrame:
    """Every cell as text, so the CSV bytes depend only on the values (``exact``: columns such
    as eps written as their shortest exact repr, so 8/255 survives a round trip)."""
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        out[col] = [_format_cell(v, col in exact) for v in df[col].tolist()]
    return out


def _format_cell(value: Any, exact: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "True" if value else "False"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return format_float(float(value), exact)
    return str(value)


def csv_text(df: pd.DataFrame, exact: Collection[str] = ("eps",)) -> str:
    return format_frame(df, exact).to_csv(index=False, lineterminator="\n")


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
