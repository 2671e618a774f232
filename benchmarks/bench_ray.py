"""The same grid on Ray with 1 and then 2 workers: wall time, speed-up, identical results.

Each worker is a Ray CPU slot running one cell at a time with one torch thread
(the run's ``threads``), so 2 workers on a 2-core machine can approach 2x. The
local executor with one thread is timed beside them as the reference; the Ray
instance is started before the clock (a cluster is already up in real use),
and every run writes its own run directory, whose results.csv must be
byte-identical across the three.

Run (a few minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_ray.py | tee benchmarks/results/ray_cpu.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="test points per cell")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--epochs", type=int, default=1, help="training of the small CNN on mnist5k")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats (the fastest counts)")
    return p.parse_args()


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label)


def main() -> None:
    import ray

    import robench
    from robench.checkpoints import save_checkpoint
    from robench.config import RunConfig
    from robench.runner import run_attack

    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="robench-ray-bench-"))
    model = robench.train("softmax", "mnist5k", arch="small-cnn", epochs=args.epochs, seed=0, device="cpu")
    ckpt = str(save_checkpoint(model, root / "softmax.pt"))
    grid = dict(models=[ckpt], attacks=["fgsm", f"pgd:steps={args.steps}", f"bim:steps={args.steps}"],
                eps=[0.1, 0.2, 0.3], detectors=["max-softmax"], threats=["gray-box"], n=args.n,
                batch_size=args.n, device="cpu", threads=1, sanity=False)
    cells = len(grid["attacks"]) * len(grid["eps"])

    def timed(label: str, executor: str, workers: int, repeat: int) -> float:
        if executor == "ray":
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            t0 = time.perf_counter()
            run_attack(RunConfig(**grid, executor=executor), str(root / f"{label}-{repeat}"), quiet=True)
            return time.perf_counter() - t0
        finally:
            if executor == "ray":
                ray.shutdown()

    plans = [("local, 1 thread", "local", 1), ("ray, 1 worker", "ray", 1), ("ray, 2 workers", "ray", 2)]
    times = {label: [] for label, _, _ in plans}
    for repeat in range(args.repeats):
        for label, executor, workers in plans:
            times[label].append(timed(_slug(label), executor, workers, repeat))

    print("# robench Ray executor benchmark")
    print(f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs, {platform.machine()}, "
          f"python {platform.python_version()}")
    print(f"grid: {cells} cells (fgsm, pgd-{args.steps}, bim-{args.steps} x eps 0.1/0.2/0.3, gray-box), "
          f"{args.n} mnist5k points per cell, small-cnn; 1 torch thread per cell; best of {args.repeats}\n")
    base = min(times["ray, 1 worker"])
    print(f"{'executor':<18} {'wall s (best)':>14} {'all runs':>20} {'speed-up vs ray-1':>18}")
    for label, _, _ in plans:
        runs = " ".join(f"{t:.1f}" for t in times[label])
        print(f"{label:<18} {min(times[label]):>14.1f} {runs:>20} {base / min(times[label]):>17.2f}x")
    reference = (root / f"{_slug(plans[0][0])}-0" / "results.csv").read_bytes()
    same = all((root / f"{_slug(label)}-{r}" / "results.csv").read_bytes() == reference
               for label, _, _ in plans for r in range(args.repeats))
    print(f"\nresults.csv byte-identical across all {len(plans) * args.repeats} runs: {same}")


if __name__ == "__main__":
    main()
