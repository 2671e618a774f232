"""``--cascade`` against the full grid: passes, time and worst-case robust accuracy, one run.

The full grid runs every attack on every point; the cascade runs each further
attack (and each PGD restart) only on the points still robust. Per eps the
worst-case robust accuracy is, for the full grid, the share of points correct
when clean and never misclassified by any attack (from samples.csv), and for
the cascade the robust accuracy of the chain's last cell. Passes are the
attacks' forward + backward passes per point, summed over the grid.

Run (a few minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_cascade.py | tee benchmarks/results/cascade_cpu.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ATTACKS = ["fgsm", "bim:steps=10", "pgd:steps=20,restarts=2", "pgd:objective=margin,steps=20", "mim:steps=20"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--epochs", type=int, default=1, help="training of the small CNN on mnist5k")
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.15, 0.2])
    return p.parse_args()


def worst_case(samples: pd.DataFrame) -> pd.Series:
    robust = (samples["clean_pred"] == samples["label"]) & (samples["adv_pred"] == samples["label"])
    return robust.groupby([samples["eps"], samples["index"]]).all().groupby(level=0).mean()


def main() -> None:
    import robench
    from robench.checkpoints import save_checkpoint
    from robench.config import RunConfig
    from robench.runner import run_attack

    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="robench-cascade-bench-"))
    model = robench.train("softmax", "mnist5k", arch="small-cnn", epochs=args.epochs, seed=0, device="cpu")
    ckpt = str(save_checkpoint(model, root / "softmax.pt"))
    grid = dict(models=[ckpt], attacks=ATTACKS, eps=list(args.eps), detectors=["max-softmax"],
                threats=["gray-box"], n=args.n, batch_size=250, device="cpu", sanity=False)
    seconds = {}
    for mode in ("full", "cascade"):
        t0 = time.perf_counter()
        run_attack(RunConfig(**grid, cascade=mode == "cascade"), str(root / mode), quiet=True)
        seconds[mode] = time.perf_counter() - t0
    full = pd.read_csv(root / "full" / "results.csv")
    cascade = pd.read_csv(root / "cascade" / "results.csv")
    full_worst = worst_case(pd.read_csv(root / "full" / "samples.csv"))
    last_name = ATTACKS[-1].split(":")[0]
    cascade_worst = cascade[cascade["attack"] == last_name].set_index("eps")["robust_acc"]

    print("# robench --cascade benchmark")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, "
          f"{platform.machine()}, python {platform.python_version()}")
    print(f"model: small-cnn softmax on mnist5k ({args.epochs} epoch), clean accuracy "
          f"{full['clean_acc'].iloc[0]:.3f}; {args.n} test points, gray-box")
    print(f"attacks, in cascade order: {', '.join(ATTACKS)}\n")
    print(f"{'eps':>5} {'worst-case full':>16} {'worst-case cascade':>19} {'passes full':>12} "
          f"{'passes cascade':>15} {'ratio':>6}")
    for eps in args.eps:
        pf = full[full["eps"] == eps]["passes_per_sample"].sum()
        pc = cascade[cascade["eps"] == eps]["passes_per_sample"].sum()
        print(f"{eps:>5g} {full_worst[eps]:>16.3f} {cascade_worst[eps]:>19.3f} {pf:>12.1f} {pc:>15.1f} "
              f"{pc / pf:>6.3f}")
    pf, pc = full["passes_per_sample"].sum(), cascade["passes_per_sample"].sum()
    print(f"{'all':>5} {'':>16} {'':>19} {pf:>12.1f} {pc:>15.1f} {pc / pf:>6.3f}")
    print(f"\nwall time: full {seconds['full']:.1f} s, cascade {seconds['cascade']:.1f} s "
          f"({seconds['cascade'] / seconds['full']:.3f}x; includes loading, detector fitting and evaluation)")
    print("passes: forward + backward passes of the attacks per test point (results.csv passes_per_sample).")


if __name__ == "__main__":
    main()
