"""The run directory's file schema: column lists, how CSVs are read back, cell and file names.

``robench attack --out RUN_DIR`` writes, and ``robench report`` reads::

    RUN_DIR/manifest.json          resolved config, versions, git hash, device, seeds, times
    RUN_DIR/results.csv            one row per cell (RESULT_COLUMNS), plus one ``worst-case`` row per
                                   (model, eps, norm, threat, detector); byte-reproducible
    RUN_DIR/samples.parquet        one row per sample per cell (SAMPLE_COLUMNS); samples.csv when
                                   pyarrow is not installed (both are read)
    RUN_DIR/timings.csv            wall-clock seconds per cell (kept out of results.csv)
    RUN_DIR/sanity.csv             optional: model, check, flagged, evidence
    RUN_DIR/features/<model>.npz   clean test features: f (N, D) float32, y, pred, index (N,)
    RUN_DIR/arrays/<sha>.npy.gz    adversarial examples and their features, stored once per content
                                   (sha of the .npy bytes; gzip level 1, no timestamp)
    RUN_DIR/cells/<cell_id>/       row.json, samples.parquet|csv, arrays.json (which arrays are the
                                   cell's x_adv and adv_features), timing.json
    RUN_DIR/.lock                  held by the process writing the run (an OS lock; see RunDir.open)

Runs written before arrays/ existed keep x_adv.npy and adv_features.npy in the cell folder, and
those written before compression keep arrays/<sha>.npy; both are read the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, List, Mapping

import pandas as pd

from robench.errors import RobenchError
from robench.io import to_jsonable
from robench.metrics import METRIC_COLUMNS as _METRICS

ID_COLUMNS: List[str] = [
    "model", "defense", "dataset", "arch", "attack", "attack_params", "norm", "eps", "threat",
    "objective", "detector", "seed",
]
METRIC_COLUMNS: List[str] = list(_METRICS)
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
ARRAY_SUFFIX = ".npy.gz"  # arrays/<sha><suffix>
WORST_CASE = "worst-case"  # the attack name of the rows over all attacks of a (model, eps, norm, threat, detector)
VERIFY = "verify"  # the attack name of robench verify's rows (bounds, not attacks)

# Columns read back as text (never as numbers or NaN), whatever their values look like.
TEXT_COLUMNS = {c for c in ID_COLUMNS if c not in ("eps", "seed")} | {
    "objective_wins", "cascade_after", "cell_id", "input_sha1", "check", "evidence"}
EXACT_FLOAT_COLUMNS = ("eps",)  # written as the shortest exact repr, so 8/255 survives a round trip
_CELL_ID = re.compile(r"^[A-Za-z0-9_=+-][A-Za-z0-9._=+-]{0,199}$")


def read_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A robench CSV: text columns stay text ('' for blanks), everything else parsed by pandas."""
    header = pd.read_csv(path, nrows=0).columns
    dtypes = {c: str for c in header if c in TEXT_COLUMNS}
    df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])
    for col in dtypes:
        df[col] = df[col].fillna("")
    return df


def make_cell_id(row: Mapping[str, Any]) -> str:
    """A readable, filesystem-safe cell id for a row written outside the runner (imports, tests).

    ``robench attack`` names its cells by a content hash of what decides their
    numbers (see :mod:`robench.plan`); this is the id for rows that have no such key:
    a slug of the row's key plus a hash of its id columns.
    """
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


def parquet_available() -> bool:
    """Whether per-sample records can be written as Parquet (pyarrow installed)."""
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def read_table(path_stem: "os.PathLike[str]") -> pd.DataFrame:
    """``<stem>.parquet`` if present, else ``<stem>.csv`` (per-sample records of either format)."""
    from pathlib import Path

    stem = Path(path_stem)
    parquet, csv = stem.with_suffix(".parquet"), stem.with_suffix(".csv")
    try:
        if parquet.is_file():
            df = pd.read_parquet(parquet)
            for col in (c for c in df.columns if c in TEXT_COLUMNS):
                df[col] = df[col].fillna("").astype(str)
            return df
        return read_csv(csv)
    except FileNotFoundError:
        raise RobenchError(f"{csv}: no such file (was the run finished?)") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise RobenchError(f"{stem}: not a readable table ({exc})") from None
    except ImportError:
        raise RobenchError(f"{parquet}: reading Parquet needs pyarrow: pip install pyarrow") from None
