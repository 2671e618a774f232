"""Exact verification by HiGHS alone vs branch and bound first (then HiGHS), side by side.

For the 784-64-32 GM MLP on mnist5k (``robench train --defense gm --arch mlp --dataset mnist5k``), on the
test points that need the mixed-integer programs (PGD does not break them and CROWN does not prove
them), each point is verified with ``solver="highs"`` and with ``solver="auto"`` (bab.py on each open
target first, HiGHS for what it leaves open), alternating which goes first, from the same PGD warm
start and with the same workers; prints per point both verdicts and seconds, then the totals, medians,
maxima, undecided counts and the ratio. Two decided verdicts that differ stop the run: one is a bug.

    python benchmarks/bench_bab.py --model mlp-gm.pt [--n 200] [--eps 0.05] [--time-limit 60] [--workers 2]
"""

from __future__ import annotations

import time

import numpy as np

from bench_verify_workers import arguments, hard_points  # the same options and points
from robench.verify import verify_points
from robench.verify.api import available_cores

SOLVERS = ("highs", "auto")


def main(argv=None) -> int:
    args = arguments(__doc__.splitlines()[0], 200).parse_args(argv)
    workers = args.workers or available_cores()
    model, x, y, x_adv, hard = hard_points(args)
    print(f"{len(hard)} of {len(y)} points need programs (eps {args.eps:g}, time limit {args.time_limit:g} s, "
          f"{workers} workers): HiGHS alone vs bab then HiGHS")
    print("point | highs: verdict | s | auto: verdict | s | bab subdomains")
    seconds = {s: [] for s in SOLVERS}
    undecided = {s: 0 for s in SOLVERS}
    for k, i in enumerate(hard):
        res = {}
        for solver in (SOLVERS if k % 2 == 0 else SOLVERS[::-1]):
            t0 = time.perf_counter()
            (res[solver],) = verify_points(model, x[i:i + 1], y[i:i + 1], args.eps, time_limit=args.time_limit,
                                           x_start=x_adv[i:i + 1], workers=workers, solver=solver)
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
