"""Native APGD against torchattacks, and the detector-aware attacks against today's white-box set.

Part 1, on each checkpoint and eps: robust accuracy and wall time of robench's
``apgd`` (CE, DLR, and APGD-T = DLR with ``targets=9``) beside torchattacks'
``APGD`` / ``APGDT`` with the same steps on the same points, and robench's PGD
at the same number of steps (APGD should never be weaker).

Part 2, with the model's auto detector (gm-likelihood for GM, mahalanobis
otherwise) at the 5%-FPR threshold: det_robust_acc (fraction of points whose
example is classified correctly or flagged) of the gray-box PGD (ce), of
today's white-box worst case (per point over ce, margin, joint and, for GM,
lkd), of each new candidate (selective and orthogonal PGD on the joint
objective, the joint objective multi-targeted at the 9 other classes with PGD
and with APGD, APGD-CE, and for GM the lkd pull with 9 targets), and of the
worst case over all of them; passes per point beside each.

Run (CPU, one thread; about 15 minutes per model and eps at n 200, steps 100)::

    robench train --defense gm --dataset mnist5k --seed 0 --out gm.pt
    robench train --defense softmax --dataset mnist5k --seed 0 --out softmax.pt
    nice .venv/bin/python benchmarks/bench_apgd.py gm.pt softmax.pt --n 200 --steps 100
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Dict, Tuple

import torch

import robench
from robench.attacks import create_attack
from robench.data import load_dataset


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--n", type=int, default=200, help="test points")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--part", choices=("apgd", "adaptive", "both"), default="both")
    return p.parse_args()


def timed(fn: Callable[[], torch.Tensor]) -> Tuple[torch.Tensor, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def part_apgd(model, x, y, eps: float, steps: int) -> None:
    import torchattacks

    def acc(x_adv: torch.Tensor) -> float:
        return float((model.predict(x_adv) == y).float().mean())

    k = model.num_classes
    rows = [
        ("APGD-CE", lambda: create_attack("apgd", model, eps=eps, steps=steps)(x, y),
         lambda: torchattacks.APGD(model, eps=eps, steps=steps, loss="ce")(x, y)),
        ("APGD-DLR", lambda: create_attack("apgd", model, eps=eps, steps=steps, objective="dlr")(x, y),
         lambda: torchattacks.APGD(model, eps=eps, steps=steps, loss="dlr")(x, y)),
        ("APGD-T", lambda: create_attack("apgd", model, eps=eps, steps=steps, objective="dlr", targets=k - 1)(x, y),
         lambda: torchattacks.APGDT(model, eps=eps, steps=steps, n_classes=k)(x, y)),
    ]
    for label, ours, theirs in rows:
        (a, ta), (b, tb) = timed(ours), timed(theirs)
        print(f"  eps {eps:<4g} {label:<9} robench {acc(a):.3f} ({ta:6.1f} s)   torchattacks {acc(b):.3f} "
              f"({tb:6.1f} s)   diff {acc(a) - acc(b):+.3f}", flush=True)
    for objective in ("ce", "dlr"):
        pgd = create_attack("pgd", model, eps=eps, steps=steps, objective=objective)(x, y)
        print(f"  eps {eps:<4g} PGD-{objective.upper():<5} robench {acc(pgd):.3f} (same steps)", flush=True)


def candidates(model, detector) -> Dict[str, Dict[str, Tuple[str, Dict[str, Any]]]]:
    """{"old" | "new": {label: (attack name, arguments)}}: today's white-box objectives and the new ones."""
    joint = {"objective": "joint", "detector": detector, "fpr": 0.05}
    others = model.num_classes - 1
    old = {o: ("pgd", {**joint} if o == "joint" else {"objective": o})
           for o in ["ce", "margin", "joint"] + (["lkd"] if model.is_gm else [])}
    new = {"joint-selective": ("pgd", {**joint, "update": "selective"}),
           "joint-orthogonal": ("pgd", {**joint, "update": "orthogonal"}),
           "joint-targets9": ("pgd", {**joint, "targets": others}),
           "apgd-ce": ("apgd", {}),
           "apgd-joint-targets9": ("apgd", {**joint, "targets": others})}
    if model.is_gm:
        new["lkd-targets9"] = ("pgd", {"objective": "lkd", "targets": others})
    return {"old": old, "new": new}


def part_adaptive(model, detector, x, y, eps: float, steps: int) -> None:
    threshold = detector.threshold(0.05)
    lost: Dict[str, torch.Tensor] = {}
    for group, specs in candidates(model, detector).items():
        for label, (name, kwargs) in specs.items():
            attack = create_attack(name, model, eps=eps, steps=steps, **kwargs)
            x_adv, seconds = timed(lambda: attack(x, y))
            lost[label] = (model.predict(x_adv) != y) & (detector.score(x_adv) <= threshold)
            passes = (attack.n_forward + attack.n_backward) / len(x)
            print(f"  eps {eps:<4g} {group} {label:<19} det_robust_acc_fpr5 {kept(lost[label]):.3f}"
                  f"   passes/pt {passes:6.0f}   {seconds:6.1f} s", flush=True)
    old = list(candidates(model, detector)["old"])
    worst_old = torch.stack([lost[k] for k in old]).any(0)
    worst_all = torch.stack(list(lost.values())).any(0)
    print(f"  eps {eps:<4g} worst case: old white-box {kept(worst_old):.3f}   old + new {kept(worst_all):.3f}   "
          f"gray-box (ce) {kept(lost['ce']):.3f}", flush=True)


def kept(lost: torch.Tensor) -> float:
    """det_robust_acc: the fraction of points not lost (classified correctly or flagged)."""
    return 1 - float(lost.float().mean())


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from robench.defenses.detectors import create_detector

    for path in args.checkpoints:
        model = robench.load_model(path).eval()
        data = load_dataset(model.info.dataset, seed=int(model.info.split.get("seed", 0)))
        x, y = data.split("test", args.n)
        print(f"{path}: {model.info.defense}, n {len(x)}, steps {args.steps}, "
              f"clean acc {float((model.predict(x) == y).float().mean()):.3f}", flush=True)
        detector = create_detector("auto", model).fit(*data.split("train")).calibrate(data.split("val")[0])
        for eps in args.eps:
            if args.part in ("apgd", "both"):
                part_apgd(model, x, y, eps, args.steps)
            if args.part in ("adaptive", "both"):
                part_adaptive(model, detector, x, y, eps, args.steps)


if __name__ == "__main__":
    main()
