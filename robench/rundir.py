"""RunDir: the one owner of a run directory (layout in :mod:`robench.schema`).

It opens a run (refusing a folder that is not one, or one bound to another
configuration), holds an OS-level lock while a process writes it (so a second
``robench attack`` on the same ``--out`` refuses at once, and a killed process
never leaves a stale lock), removes what a killed run left half-written, prunes
cells the configuration no longer plans, writes each cell whole (staged, then
renamed), stores every adversarial array once however many cells share it, and
merges the cells into the top-level tables.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import pandas as pd

from robench.errors import RobenchError, UsageError
from robench.io import (
    atomic_write_bytes, atomic_write_csv, atomic_write_json, current_umask, fsync_dir, gzip_bytes, npy_bytes,
    order_columns, sort_rows, to_jsonable, to_numpy,
)
from robench.runfiles import RunFiles
from robench.schema import (
    ARRAY_SUFFIX, CELL_KEY, EXACT_FLOAT_COLUMNS, ID_COLUMNS, RESULT_COLUMNS, SAMPLE_COLUMNS, TIMING_COLUMNS, parquet_available,
    safe_name,
)

OUTPUTS = ("results.csv", "samples.parquet", "samples.csv", "timings.csv", "sanity.csv")
LOCK = ".lock"


class RunDir(RunFiles):
    """Owner (and reader) of one run directory.

    Args:
        path: the run directory (:meth:`open` to write one, :func:`read_run` to read a finished one).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self._lock_fd: Optional[int] = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- opening ----------------------------------------------------------------------
    @staticmethod
    def check(path: str | os.PathLike, identity: Mapping[str, Any], force: bool = False,
              key: str = "config") -> bool:
        """Refuse ``path`` unless it is new, a run of ``identity``, or (with ``force``) any run.

        Touches nothing, so a suite can call it before training. Returns whether
        ``path`` holds a run of another configuration (allowed only with ``force``).
        ``key``: the manifest entry of the command (``config`` for attack and run,
        ``verify_config_<method>`` for each verify method: all may write one run directory).
        """
        path = Path(path)
        _refuse_foreign(path)
        manifest = path / "manifest.json"
        if not manifest.is_file():
            return False
        try:
            found = json.loads(manifest.read_text(encoding="utf-8"))
            old = found.get(key)
        except (OSError, ValueError, AttributeError):
            found, old = {}, None
        if old == identity or (key not in found and isinstance(found, dict) and found):
            return False  # this command's first cells in a run of the other command
        if not force:
            raise UsageError(f"--out {path}: this run directory was made with a different configuration "
                             f"({_config_diff(old, dict(identity))}); use --force to replace it (finished cells "
                             f"that still match are kept), or choose another --out")
        return True

    @classmethod
    def create(cls, path: str | os.PathLike) -> "RunDir":
        """Make ``path`` a run directory (an existing run is reopened), without locking it."""
        path = Path(path)
        _refuse_foreign(path)
        (path / "cells").mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def open(cls, path: str | os.PathLike, command: str = "robench") -> "RunDir":
        """Create or reopen ``path`` for writing: take its lock, then remove a killed run's leftovers.

        Raises:
            UsageError: another live process holds the lock (the message names it).
        """
        run = cls.create(path)
        run._lock(command)
        run._remove_leftovers()
        return run

    def _lock(self, command: str) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no OS lock to take
            return
        path = self.path / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown process"
                os.close(fd)
                raise UsageError(f"--out {self.path}: another robench process ({holder}) is writing this run "
                                 f"directory; wait for it to finish, or choose another --out") from None
            try:  # the holder before us may have removed the file after we opened it: lock the one in place
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {command}, since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock and remove its file (the OS releases the lock when a process dies, too)."""
        if self._lock_fd is not None:
            (self.path / LOCK).unlink(missing_ok=True)  # while still holding it: see _lock
            os.close(self._lock_fd)
            self._lock_fd = None

    def _remove_leftovers(self) -> None:
        """Temporary files and staged cells of a killed run."""
        for folder in (self.path, self.path / "cells", self.path / "features", self.path / "arrays",
                       self.path / "checkpoints"):
            for item in folder.glob(".*") if folder.is_dir() else []:
                if item.is_dir() and folder.name == "cells":
                    shutil.rmtree(item, ignore_errors=True)
                elif item.is_file() and item.name.endswith(".tmp"):
                    item.unlink(missing_ok=True)

    def start(self, manifest: Mapping[str, Any], replacing: bool = False) -> None:
        """Write the manifest of a (re)started run; ``replacing`` another configuration drops its outputs.

        A ``robench verify`` of the same directory keeps its own entries (``verify_*``).
        """
        if replacing:
            for name in OUTPUTS:
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / "features", ignore_errors=True)
        kept = {k: v for k, v in self._current().items() if k.startswith("verify")}
        self.write_manifest({**kept, **manifest})

    def start_command(self, key: str, identity: Mapping[str, Any], replacing: bool = False) -> None:
        """Record a second command's configuration (``verify_config``) beside the run's own manifest."""
        from robench.provenance import collect_versions, git_hash

        current = self._current()
        base = {} if current else {"versions": collect_versions(), "git": git_hash()}
        self.write_manifest({**current, **base, key: dict(identity), f"{key}_replaced": bool(replacing)})

    def _current(self) -> Dict[str, Any]:
        return self.manifest() if (self.path / "manifest.json").is_file() else {}

    def prune(self, planned: set, prefix: Optional[str] = None) -> None:
        """Remove finished cells not in ``planned`` (stale keys), so results.csv has only this run's.

        Only the cells of the pruning command: ids starting with ``prefix`` (verify
        cells), or, with no prefix, the ids that do not start with ``verify-``.
        """
        for cell_id in self.cell_ids():
            mine = cell_id.startswith(prefix) if prefix else not cell_id.startswith("verify-")
            if mine and cell_id not in planned:
                trash = self.cell_dir(cell_id).with_name(f".stale-{cell_id}")
                os.replace(self.cell_dir(cell_id), trash)  # out of sight at once, even if killed mid-removal
                shutil.rmtree(trash, ignore_errors=True)

    def clear(self) -> None:
        """Remove everything a run wrote here."""
        for name in ("manifest.json", *OUTPUTS):
            (self.path / name).unlink(missing_ok=True)
        for name in ("cells", "features", "arrays"):
            shutil.rmtree(self.path / name, ignore_errors=True)
        (self.path / "cells").mkdir(parents=True, exist_ok=True)

    # -- manifest -----------------------------------------------------------------------

    def write_manifest(self, manifest: Mapping[str, Any]) -> Path:
        return atomic_write_json(self.path / "manifest.json", manifest)

    def update_manifest(self, **fields: Any) -> Path:
        """Add ``fields`` to manifest.json (one read, update, atomic write)."""
        current = self.manifest() if (self.path / "manifest.json").is_file() else {}
        return self.write_manifest({**current, **fields})

    # -- top-level tables -----------------------------------------------------------------





    def write_sanity(self, report: pd.DataFrame) -> Path:
        return atomic_write_csv(self.path / "sanity.csv", report)


    # -- features ----------------------------------------------------------------------
    def write_features(self, model: str, f: Any, y: Any, pred: Any, index: Any) -> Path:
        """Clean test features of ``model``: f (N, D) float32, y, pred and index (N,)."""
        arrays = {"f": to_numpy(f, np.float32), "y": to_numpy(y, np.int64),
                  "pred": to_numpy(pred, np.int64), "index": to_numpy(index, np.int64)}
        n = len(arrays["f"])
        if arrays["f"].ndim != 2 or any(len(a) != n or a.ndim != 1 for k, a in arrays.items() if k != "f"):
            raise ValueError(f"features of {model}: need f (N, D) and y, pred, index (N,); got "
                             f"{ {k: a.shape for k, a in arrays.items()} }")
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return atomic_write_bytes(self.path / "features" / f"{safe_name(model)}.npz", buf.getvalue())



    # -- cells -------------------------------------------------------------------------------









    def store_array(self, array: Any) -> str:
        """Store ``array`` once under arrays/ by its content; returns its digest."""
        data = npy_bytes(to_numpy(array, np.float32))
        digest = hashlib.sha256(data).hexdigest()[:32]
        path = self.path / "arrays" / f"{digest}{ARRAY_SUFFIX}"
        if not path.is_file():
            atomic_write_bytes(path, gzip_bytes(data))
        return digest

    def write_cell(self, cell_id: str, row: Mapping[str, Any], samples: pd.DataFrame,
                   adv_features: Any, x_adv: Any = None, seconds: Optional[float] = None) -> Path:
        """Write one cell whole: staged in a hidden folder, then renamed into ``cells/<cell_id>``.

        Args:
            cell_id: the cell's folder name.
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
        samples = _cell_samples(cell_id, row, samples)
        feats = None if adv_features is None else to_numpy(adv_features, np.float32)
        if feats is not None and (feats.ndim != 2 or len(feats) != len(samples)):
            raise ValueError(f"cell {cell_id}: adv_features {feats.shape} do not match {len(samples)} samples")
        refs = {"adv_features": self.store_array(feats) if feats is not None else None,
                "x_adv": self.store_array(x_adv) if x_adv is not None else None}
        stage = Path(tempfile.mkdtemp(prefix=f".{cell_id}.", dir=final.parent))
        try:
            write_table(stage / "samples", samples)
            atomic_write_json(stage / "arrays.json", refs)
            if seconds is not None:
                atomic_write_json(stage / "timing.json", {"seconds": seconds})
            atomic_write_json(stage / "row.json", row)
            os.chmod(stage, 0o777 & ~current_umask())  # mkdtemp makes it private
            shutil.rmtree(final, ignore_errors=True)
            os.replace(stage, final)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        fsync_dir(final.parent)
        return final

    def write_timing(self, cell_id: str, seconds: float) -> Path:
        """Record the wall-clock time of a finished cell (kept out of results.csv)."""
        return atomic_write_json(self.cell_dir(cell_id) / "timing.json", {"seconds": seconds})

    # -- finishing -----------------------------------------------------------------------
    def finalize(self, worst_case: bool = True) -> pd.DataFrame:
        """Merge every cell into results.csv, samples and timings.csv; return the results.

        ``worst_case``: add a ``worst-case`` row per (model, eps, norm, threat, detector),
        computed from the cells' per-sample records (:mod:`robench.worstcase`).
        """
        ids = self.cell_ids()
        rows = [self.cell_row(c) for c in ids]
        order = {c: i for i, c in enumerate(_cell_order(rows))}
        parts = [self.samples(c) for c in ids]
        samples = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=SAMPLE_COLUMNS)
        samples = order_columns(samples, SAMPLE_COLUMNS)
        samples["_order"] = samples["cell_id"].map(order)
        samples = sort_rows(samples, ["_order", "index"]).drop(columns="_order")
        results = pd.DataFrame(rows) if rows else pd.DataFrame()
        if worst_case and len(results):
            from robench.gap import add_verification_gap
            from robench.worstcase import worst_case_rows

            results = pd.concat([results, worst_case_rows(results, samples, seed=None)], ignore_index=True)
            results = add_verification_gap(results, samples)
        write_results(results.drop(columns="cell_id", errors="ignore"), self.path / "results.csv")
        for stale in ("samples.parquet", "samples.csv"):  # one format per run
            (self.path / stale).unlink(missing_ok=True)
        write_table(self.path / "samples", samples)
        atomic_write_csv(self.path / "timings.csv", self._timings(rows))
        self._collect_arrays(ids)
        return self.results()

    def _collect_arrays(self, ids: List[str]) -> None:
        """Remove stored arrays no cell refers to (cells pruned or replaced)."""
        folder = self.path / "arrays"
        if not folder.is_dir():
            return
        used = set()
        for cell_id in ids:
            refs = self.cell_dir(cell_id) / "arrays.json"
            if refs.is_file():
                used |= {v for v in json.loads(refs.read_text(encoding="utf-8")).values() if v}
        for path in folder.iterdir():
            if path.name.split(".")[0] not in used and path.name.endswith((".npy", ".npy.gz")):
                path.unlink(missing_ok=True)

    def _timings(self, rows: List[Dict[str, Any]]) -> pd.DataFrame:
        out = []
        for row in rows:
            path = self.cell_dir(row["cell_id"]) / "timing.json"
            seconds = json.loads(path.read_text()).get("seconds") if path.is_file() else None
            out.append({**{k: row.get(k) for k in ["cell_id", *CELL_KEY]}, "seconds": seconds})
        df = pd.DataFrame(out, columns=TIMING_COLUMNS)
        return sort_rows(df, CELL_KEY + ["cell_id"])




def write_table(stem: Path, df: pd.DataFrame) -> Path:
    """Per-sample records as ``<stem>.parquet`` (pyarrow installed) or ``<stem>.csv``."""
    if parquet_available():
        buf = io.BytesIO()
        df.reset_index(drop=True).to_parquet(buf, index=False, engine="pyarrow", compression="zstd")
        return atomic_write_bytes(stem.with_suffix(".parquet"), buf.getvalue())
    return atomic_write_csv(stem.with_suffix(".csv"), df, EXACT_FLOAT_COLUMNS)


def write_results(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """results.csv: RESULT_COLUMNS in order (then extras), rows sorted by the id columns."""
    df = sort_rows(order_columns(df, RESULT_COLUMNS), ID_COLUMNS)
    return atomic_write_csv(path, df, EXACT_FLOAT_COLUMNS)


def read_run(path: str | os.PathLike) -> RunDir:
    """Open a finished run directory for reading.

    Raises:
        RobenchError: ``path`` has no manifest.json or no results.csv.
    """
    if not RunDir.is_run(path):
        hint = ""
        if (Path(path) / "manifest.json").is_file():
            hint = "; it has a manifest but was never finished"
        raise RobenchError(f"{path} is not a robench run directory (no manifest.json / results.csv){hint}")
    return RunDir(path)


def _refuse_foreign(path: Path) -> None:
    """A file, or a non-empty folder that is not a run, is never written into."""
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not RunFiles.looks_like_run(path):
        raise UsageError(f"--out {path}: folder exists, is not empty and is not a robench run directory; "
                         f"choose another --out")


def _cell_samples(cell_id: str, row: Mapping[str, Any], samples: pd.DataFrame) -> pd.DataFrame:
    samples = samples.copy()
    samples["cell_id"] = cell_id
    for col in CELL_KEY:
        if col not in samples.columns:
            samples[col] = row[col]
    return order_columns(samples, SAMPLE_COLUMNS)


def _cell_order(rows: List[Dict[str, Any]]) -> List[str]:
    df = pd.DataFrame(rows, columns=["cell_id", *ID_COLUMNS])
    return sort_rows(df, ID_COLUMNS + ["cell_id"])["cell_id"].tolist()


def _config_diff(old: Any, new: Dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "its manifest.json has no readable configuration"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    parts = [f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys[:4]]
    return "; ".join(parts) + (f"; and {len(keys) - 4} more" if len(keys) > 4 else "")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
