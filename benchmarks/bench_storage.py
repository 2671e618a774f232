"""Bytes per cell of a run directory: the layout robench writes now beside the one it wrote before.

Before this round every cell folder held its own ``x_adv.npy`` and ``adv_features.npy`` (identical
arrays once per detector cell of a gray-box attack) and ``samples.csv`` as text, and the run a
merged ``samples.csv``. Now arrays are stored once by content under ``arrays/``, gzip-compressed
(level 1), and per-sample records are Parquet. The "before" column is measured by writing the old
files of the same run (the same arrays and records, with the old writers' formats) into a scratch folder.

    python benchmarks/bench_storage.py RUN_DIR [RUN_DIR ...]
    python benchmarks/bench_storage.py --cifar-grid /tmp/storage   # builds a CIFAR-shaped 10,000-point grid
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict

import numpy as np


def old_layout_bytes(run_dir: Path) -> Dict[str, float]:
    """Bytes of the cells (and merged samples) in the layout before arrays/ and Parquet."""
    from robench.io import csv_text, npy_bytes
    from robench.rundir import RunDir

    run = RunDir(run_dir)
    total, cells = 0, run.cell_ids()
    for cell_id in cells:
        folder = run.cell_dir(cell_id)
        total += len(csv_text(run.samples(cell_id)).encode())
        if run.has_adv_features(cell_id):
            total += len(npy_bytes(run.adv_features(cell_id).astype(np.float32)))
        x_adv = run.x_adv(cell_id)
        if x_adv is not None:
            total += len(npy_bytes(x_adv.astype(np.float32)))
        total += sum(p.stat().st_size for p in folder.iterdir() if p.name in ("row.json", "timing.json"))
    merged = len(csv_text(run.samples()).encode()) if run.has_samples() else 0
    return {"cells": len(cells), "bytes": total + merged, "per_cell": (total + merged) / max(len(cells), 1)}


def new_layout_bytes(run_dir: Path) -> Dict[str, float]:
    files = [p for p in (run_dir / "cells").rglob("*") if p.is_file()]
    files += [p for p in (run_dir / "arrays").glob("*.npy*")] if (run_dir / "arrays").is_dir() else []
    files += [p for p in run_dir.glob("samples.*") if p.is_file()]
    n = sum(1 for p in (run_dir / "cells").iterdir() if (p / "row.json").is_file())
    total = sum(p.stat().st_size for p in files)
    return {"cells": n, "bytes": total, "per_cell": total / max(n, 1)}


def cifar_grid(folder: Path) -> Path:
    """A CIFAR-shaped grid: 50,000 random 8-bit 3x32x32 images (10,000 test points), a small-cnn trained one
    epoch (--allow-weak: random labels), FGSM at 2/255 and 8/255, gray- and white-box, three detectors."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "cifar_shaped.npz"
    if not data.is_file():
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (50_000, 3, 32, 32), dtype=np.uint8)  # 8-bit, as CIFAR-10's are
        np.savez(data, x=pixels.astype(np.float32) / 255, y=rng.integers(0, 10, 50_000))
    bin_dir = Path(sys.executable).parent
    ckpt = folder / "cnn.pt"
    if not ckpt.is_file():
        subprocess.run([bin_dir / "robench", "train", "--defense", "softmax", "--dataset", f"npz:{data}",
                        "--epochs", "1", "--allow-weak", "-q", "--out", ckpt], check=True)
    run = folder / "run"
    subprocess.run([bin_dir / "robench", "attack", "--model", ckpt, "--attack", "fgsm", "--eps", str(2 / 255),
                    "--eps", str(8 / 255), "--threat", "gray-box", "--threat", "white-box",
                    "--detector", "max-softmax", "--detector", "mahalanobis", "--detector", "kd",
                    "--n", "10000", "--batch-size", "500", "--no-sanity", "--save-adv", "-q", "--out", run], check=True)
    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*")
    parser.add_argument("--cifar-grid", default=None, help="Folder to build (and measure) the CIFAR-shaped grid in.")
    args = parser.parse_args(argv)
    runs = [Path(r) for r in args.runs] + ([cifar_grid(Path(args.cifar_grid))] if args.cifar_grid else [])
    print("| run | cells | before: bytes/cell | now: bytes/cell | ratio |")
    print("|---|---|---|---|---|")
    for run in runs:
        old, new = old_layout_bytes(run), new_layout_bytes(run)
        print(f"| {run} | {new['cells']} | {old['per_cell']:,.0f} | {new['per_cell']:,.0f} | "
              f"{old['per_cell'] / max(new['per_cell'], 1):.2f}x |")
        print(json.dumps({"before": old, "now": new}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
