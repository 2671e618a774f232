"""Exact verification by HiGHS alone vs branch and bound first (then HiGHS), side by side.

For the 784-64-32 GM MLP on mnist5k (``robench train --defense gm --arch mlp --dataset mnist5k``), on the
test points that need the mixed-integer programs (PGD does not break them and CROWN does not prove
them), each point is verified with ``solver="highs"`` and with ``solver="auto"`` (bab.py on each open
target first, HiGHS for what it leaves open), alternating which goes first, from the same PGD warm
start and with the same workers; prints per point both verdicts and seconds, then the totals, medians,
maxima, undecided counts and the ratio. Two decided verdicts that differ stop the run: one is a bug.
``--aware``: the detection-aware question instead (gm-likelihood at 5% FPR, calibrated on clean
validation data; HiGHS with the ball by outer approximation), from white-box PGD with the joint
objective, on the points it does not break and CROWN does not prove.

    python benchmarks/bench_bab.py --model mlp-gm.pt [--n 200] [--eps 0.05] [--time-limit 60] [--workers 2]
    python benchmarks/bench_bab.py --model mlp-gm.pt --aware
"""

from __future__ import annotations

import time

import numpy as np
import torch

import robench
from bench_verify_workers import arguments, hard_points  # the same options and points
from robench.verify import verify_points
from robench.verify.api import available_cores

SOLVERS = ("highs", "auto")


def aware_points(args):
    """hard_points for the detection-aware question, and its threshold."""
    torch.set_num_threads(1)
    model = robench.load_model(args.model)
    data = robench.load_dataset("mnist5k")
    x, y = data.split("test", args.n)
    det = robench.create_detector("gm-likelihood", model).fit(*data.split("train")).calibrate(data.split("val")[0])
    thr = det.threshold(0.05)
    x_adv = robench.create_attack("pgd", model, eps=args.eps, steps=100, restarts=5, objective="joint",
                                  detector=det, fpr=0.05)(x, y)
    with torch.no_grad():
        logits = model(x_adv)
    fooled = (logits.argmax(1) != y) & (-logits.max(1).values <= thr)
    quick = verify_points(model, x, y, args.eps, method="crown", threshold=thr)
    hard = [i for i in range(len(y)) if not fooled[i] and quick[i].status != "robust"]
    return model, x, y, x_adv, hard, thr


def main(argv=None) -> int:
    ap = arguments(__doc__.splitlines()[0], 200)
    ap.add_argument("--aware", action="store_true", help="the detection-aware question (gm-likelihood, 5%% FPR)")
    args = ap.parse_args(argv)
    workers = args.workers or available_cores()
    if args.aware:
        model, x, y, x_adv, hard, thr = aware_points(args)
    else:
        (model, x, y, x_adv, hard), thr = hard_points(args), None
    print(f"{len(hard)} of {len(y)} points need programs (eps {args.eps:g}, time limit {args.time_limit:g} s, "
          f"{workers} workers{', detection-aware' if args.aware else ''}): HiGHS alone vs bab then HiGHS")
    print("point | highs: verdict | s | auto: verdict | s | bab subdomains")
    seconds = {s: [] for s in SOLVERS}
    undecided = {s: 0 for s in SOLVERS}
    for k, i in enumerate(hard):
        res = {}
        for solver in (SOLVERS if k % 2 == 0 else SOLVERS[::-1]):
            t0 = time.perf_counter()
            (res[solver],) = verify_points(model, x[i:i + 1], y[i:i + 1], args.eps, time_limit=args.time_limit,
                                           x_start=x_adv[i:i + 1], workers=workers, solver=solver,
                                           threshold=thr)
            seconds[solver].append(time.perf_counter() - t0)
            undecided[solver] += res[solver].status not in ("robust", "not-robust")
        a, b = res["highs"].status, res["auto"].status
        if a in ("robust", "not-robust") and b in ("robust", "not-robust") and a != b:
            raise SystemExit(f"point {i}: the verdicts differ ({a} vs {b}): a bug")
        print(f"{i} | {a} | {seconds['highs'][-1]:.1f} | {b} | {seconds['auto'][-1]:.1f} | "
              f"{res['auto'].domains}", flush=True)
    for s in SOLVERS:
        t = np.array(seconds[s])
        print(f"{s}: total {t.sum():.0f} s, median {np.median(t):.2f} s, max {t.max():.1f} s, "
              f"undecided {undecided[s]}")
    total = {s: sum(seconds[s]) for s in SOLVERS}
    print(f"ratio highs / auto: {total['highs'] / max(total['auto'], 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
