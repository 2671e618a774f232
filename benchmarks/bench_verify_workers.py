"""Exact verification with a point's target programs one at a time vs in parallel threads, side by side.

For the 784-64-32 GM MLP on mnist5k (``robench train --defense gm --arch mlp --dataset mnist5k``), on the
test points that need the mixed-integer programs (the attack does not break them and CROWN does not
prove them), each point is verified by HiGHS alone (``solver="highs"``; ``bench_bab.py`` times branch
and bound) with ``workers=1`` and then with ``workers=W`` (default: the cores this process may use),
alternating, from the same PGD warm start; prints per point the verdicts and seconds, and the totals
and their ratio.

    python benchmarks/bench_verify_workers.py --model mlp-gm.pt [--n 60] [--eps 0.05] [--time-limit 60]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import robench
from robench.verify import verify_points
from robench.verify.api import available_cores


def arguments(description: str, n: int) -> argparse.ArgumentParser:
    """The options both exact-verification benchmarks take (bench_bab.py reuses them)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=n, help="first n test points (those that need programs are timed)")
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=None)
    return ap


def hard_points(args):
    """The model, the first n mnist5k test points, their PGD warm starts and the indices that need
    programs (PGD does not break them, CROWN does not prove them)."""
    torch.set_num_threads(1)
    model = robench.load_model(args.model)
    x, y = robench.load_dataset("mnist5k").split("test", args.n)
    x_adv = robench.create_attack("pgd", model, eps=args.eps, steps=100, restarts=5, objective="margin")(x, y)
    quick = verify_points(model, x, y, args.eps, method="crown")
    fooled = model.predict(x_adv) != y
    hard = [i for i in range(len(y)) if not fooled[i] and quick[i].status != "robust"]
    return model, x, y, x_adv, hard


def main(argv=None) -> int:
    args = arguments(__doc__.splitlines()[0], 60).parse_args(argv)
    workers = args.workers or available_cores()
    model, x, y, x_adv, hard = hard_points(args)
    print(f"{len(hard)} of {len(y)} points need programs (eps {args.eps:g}, time limit {args.time_limit:g} s); "
          f"workers 1 vs {workers}")
    print("point | verdict (1) | s (1) | verdict (W) | s (W)")
    totals = {1: 0.0, workers: 0.0}
    decided = {1: 0, workers: 0}
    for i in hard:
        row = []
        for w in (1, workers):
            t0 = time.perf_counter()
            (r,) = verify_points(model, x[i:i + 1], y[i:i + 1], args.eps, time_limit=args.time_limit,
                                 x_start=x_adv[i:i + 1], workers=w, solver="highs")
            seconds = time.perf_counter() - t0
            totals[w] += seconds
            decided[w] += r.status in ("robust", "not-robust")
            row += [r.status, f"{seconds:.1f}"]
        if "unknown" not in row and row[0] != row[2]:
            raise SystemExit(f"point {i}: the verdicts differ ({row[0]} vs {row[2]}): a bug")
        print(f"{i} | " + " | ".join(row), flush=True)
    seconds = np.array([totals[1], totals[workers]])
    print(f"total: workers 1 {seconds[0]:.0f} s, {decided[1]} decided; workers {workers} {seconds[1]:.0f} s, "
          f"{decided[workers]} decided; ratio {seconds[0] / max(seconds[1], 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
