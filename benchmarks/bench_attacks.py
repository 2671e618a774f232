"""Attack speed against its floor, and C&W-L2 quality against ART, side by side in one process.

The floor for a k-step attack is k x (forward + input-gradient backward) of the
same batch through the same model: what any gradient attack must pay. Ratios
near 1.00 mean the attack adds nothing but its passes. The headline is this
process's CPU time with one torch thread (minimum over interleaved repeats),
which other jobs on a shared machine barely disturb; median wall time is
printed beside it.

Then CW-L2 with binary search against ART's CarliniL2Method at the same budget
(binary-search steps x iterations) and batch size: time, passes, success rate
on correctly classified points, median L2.

Run (a few minutes on CPU)::

    nice .venv/bin/python benchmarks/bench_attacks.py | tee benchmarks/results/attacks_cpu.txt
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

import robench
from robench.attacks import create_attack
from robench.attacks.verify import distances


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=500, help="images in the timing batch")
    p.add_argument("--steps", type=int, default=10, help="k, the steps of PGD")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is steadiest on a shared CPU)")
    p.add_argument("--epochs", type=int, default=1, help="brief training of the small CNN (0: random weights)")
    p.add_argument("--cw-n", type=int, default=100, help="images (= batch size) for the C&W comparison")
    p.add_argument("--cw-binary", type=int, default=5, help="binary-search steps for both C&W")
    p.add_argument("--cw-steps", type=int, default=10, help="iterations per binary step for both C&W")
    return p.parse_args()


def build_model(epochs: int):
    if epochs > 0:
        return robench.train("softmax", "mnist5k", arch="small-cnn", epochs=epochs, seed=0, device="cpu")
    from robench.archs import SmallCNN
    from robench.data import MNIST_NORM
    from robench.models import ModelInfo, RobustModel

    torch.manual_seed(0)
    info = ModelInfo("small-cnn", {}, "softmax", {}, "mnist5k", 10, 32, (1, 28, 28), *MNIST_NORM)
    return RobustModel(SmallCNN(), info).freeze()


def floor(model, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """k x (forward + backward to the input) of the batch, nothing else."""
    for _ in range(k):
        xx = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xx), y, reduction="sum"), xx)
    return grad


def time_side_by_side(methods: Dict[str, Callable[[], object]],
                      repeats: int) -> Dict[str, List[Tuple[float, float]]]:
    """(CPU seconds, wall seconds) per repeat, methods interleaved round-robin.

    CPU time of this process is the headline: with one torch thread it barely
    moves when other jobs share the machine, while wall time does.
    """
    for fn in methods.values():  # warm-up (allocator, first-call overheads)
        fn()
    times: Dict[str, List[Tuple[float, float]]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            cpu0, wall0 = time.process_time(), time.perf_counter()
            fn()
            times[name].append((time.process_time() - cpu0, time.perf_counter() - wall0))
    return times


def speed(model, x, y, k: int, repeats: int) -> None:
    import torchattacks

    eps, eps2 = 0.3, 2.0
    rb = {
        "pgd": create_attack("pgd", model, eps=eps, steps=k),
        "pgd-l2": create_attack("pgd-l2", model, eps=eps2, steps=k),
        "fgsm": create_attack("fgsm", model, eps=eps),
    }
    ta = {
        "pgd": torchattacks.PGD(model, eps=eps, alpha=rb["pgd"].step_size, steps=k),
        "pgd-l2": torchattacks.PGDL2(model, eps=eps2, alpha=rb["pgd-l2"].step_size, steps=k),
        "fgsm": torchattacks.FGSM(model, eps=eps),
    }
    methods: Dict[str, Callable[[], object]] = {
        f"floor {k}x(fwd+bwd)": lambda: floor(model, x, y, k),
        "floor 1x(fwd+bwd)": lambda: floor(model, x, y, 1),
        f"robench pgd (Linf, {k} steps)": lambda: rb["pgd"](x, y),
        f"robench pgd-l2 ({k} steps)": lambda: rb["pgd-l2"](x, y),
        "robench fgsm": lambda: rb["fgsm"](x, y),
        f"torchattacks PGD ({k} steps)": lambda: ta["pgd"](x, y),
        f"torchattacks PGDL2 ({k} steps)": lambda: ta["pgd-l2"](x, y),
        "torchattacks FGSM": lambda: ta["fgsm"](x, y),
    }
    times = time_side_by_side(methods, repeats)
    cpu = {name: min(t[0] for t in ts) for name, ts in times.items()}
    base = {k: cpu[f"floor {k}x(fwd+bwd)"], 1: cpu["floor 1x(fwd+bwd)"]}
    print(f"\n## Speed: batch of {len(x)}, {repeats} interleaved repeats (+1 warm-up)\n")
    print(f"{'method':34s} {'CPU s (min)':>12s} {'wall s (median)':>16s} {'CPU / floor':>12s}")
    for name, ts in times.items():
        ref = base[1] if "fgsm" in name.lower() or "1x" in name else base[k]
        wall = statistics.median(t[1] for t in ts)
        print(f"{name:34s} {cpu[name]:12.3f} {wall:16.3f} {cpu[name] / ref:12.3f}")


class _Linear(torch.nn.Module):
    """A near-free network: attack time on it is almost all engine work."""

    def __init__(self, d: int, k: int = 10) -> None:
        super().__init__()
        self.feat = torch.nn.Linear(d, 16)
        self.head = torch.nn.Linear(16, k)
        self.classifier = self.head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat(x.flatten(1))


def engine_overhead(model, x, y, k: int, repeats: int) -> None:
    """Engine cost per step, measured where the network costs almost nothing.

    (attack - floor) on a linear model, per step, as a share of one
    fwd+bwd of the real network: an upper bound on what the attack loop adds,
    and far less noisy than subtracting two long timings on a shared CPU.
    """
    import torchattacks
    from robench.models import ModelInfo, RobustModel

    info = ModelInfo("linear", {}, "softmax", {}, "mnist5k", 10, 16, tuple(x.shape[1:]), (0.1307,), (0.3081,))
    cheap = RobustModel(_Linear(x[0].numel()), info).freeze()
    eps, eps2 = 0.3, 2.0
    rb_pgd = create_attack("pgd", cheap, eps=eps, steps=k)
    rb_l2 = create_attack("pgd-l2", cheap, eps=eps2, steps=k)
    methods: Dict[str, Callable[[], object]] = {
        "floor": lambda: floor(cheap, x, y, k),
        "robench pgd": lambda: rb_pgd(x, y),
        "robench pgd-l2": lambda: rb_l2(x, y),
        "torchattacks PGD": lambda: torchattacks.PGD(cheap, eps=eps, alpha=rb_pgd.step_size, steps=k)(x, y),
        "torchattacks PGDL2": lambda: torchattacks.PGDL2(cheap, eps=eps2, alpha=rb_l2.step_size, steps=k)(x, y),
        "real floor": lambda: floor(model, x, y, 1),
    }
    times = time_side_by_side(methods, repeats)
    cpu = {name: min(t[0] for t in ts) for name, ts in times.items()}
    per_pass = cpu["real floor"]
    print(f"\n## Engine overhead per step (linear model, {repeats} repeats), as a share of one "
          f"small-cnn fwd+bwd ({per_pass:.3f} s CPU)\n")
    for name in ("robench pgd", "robench pgd-l2", "torchattacks PGD", "torchattacks PGDL2"):
        step = (cpu[name] - cpu["floor"]) / k
        print(f"{name:20s} {1000 * step:8.2f} ms/step  {step / per_pass:8.2%}")


def _cpu_seconds(fn: Callable[[], object]) -> float:
    cpu0 = time.process_time()
    fn()
    return time.process_time() - cpu0


def cw_quality(model, x, y, binary: int, steps: int) -> None:
    correct = model.predict(x) == y
    ours = create_attack("cw-l2", model, eps=0, binary_search_steps=binary, steps=steps)
    art = dict(binary_search_steps=binary, max_iter=steps, batch_size=len(x))
    runs: List[Tuple[str, object]] = [
        ("robench cw-l2", ours),
        ("ART CarliniL2Method", create_attack("art:CarliniL2Method", model, eps=0, **art)),
        ("ART, robench's c0", create_attack("art:CarliniL2Method", model, eps=0,
                                            initial_const=ours.initial_const, **art)),
    ]
    print(f"\n## C&W-L2: {len(x)} images in one batch ({int(correct.sum())} correctly classified), "
          f"budget {binary} binary steps x {steps} iterations\n")
    one_pass = min(_cpu_seconds(lambda: floor(model, x, y, 1)) for _ in range(3))
    print(f"{'method':22s} {'CPU s':>8s} {'wall s':>8s} {'fwd/img':>8s} {'bwd/img':>8s} {'success':>8s} "
          f"{'median L2':>10s} {'CPU / floor':>12s}")
    results = []
    for name, attack in runs:
        t0, cpu0 = time.perf_counter(), time.process_time()
        x_adv = attack(x, y)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
        fooled = correct & (model.predict(x_adv) != y)
        l2 = distances(x, x_adv, "L2")
        results.append((name, fooled, l2))
        med = float(l2[fooled].median()) if fooled.any() else float("nan")
        passes = max(attack.n_forward, attack.n_backward) / len(x)  # iterations per image, early abort included
        print(f"{name:22s} {cpu_seconds:8.1f} {seconds:8.1f} {attack.n_forward / len(x):8.0f} {attack.n_backward / len(x):8.0f} "
              f"{float(fooled.sum() / correct.sum()):8.1%} {med:10.3f} {cpu_seconds / (passes * one_pass):12.3f}")
    print("\nMedian L2 on the points both attacks fool (like with like):")
    _, fooled_ours, l2_ours = results[0]
    for name, fooled, l2 in results[1:]:
        both = fooled_ours & fooled
        if both.any():
            print(f"  robench {float(l2_ours[both].median()):.3f} vs {name} {float(l2[both].median()):.3f} "
                  f"({int(both.sum())} points)")
        else:
            print(f"  vs {name}: no point fooled by both")
    print(f"\nCPU / floor: CPU time over (iterations per image x one forward+backward of the whole batch, "
          f"{one_pass:.3f} s CPU); samples that abort early leave smaller batches, so below 1 is possible.")
    print(f"\n'success' is over correctly classified points. robench cw-l2: {ours.params}. "
          f"ART: its defaults (learning_rate 0.01, initial_const 0.01) at the same budget and batch "
          f"size, then with robench's initial_const.")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.epochs)
    data = robench.load_dataset("mnist5k")
    x, y = data.split("test", args.n)
    print("# robench attack benchmark")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {platform.machine()} "
          f"{platform.processor() or ''}, python {platform.python_version()}")
    print(f"model: small-cnn softmax on mnist5k, {args.epochs} epoch(s), "
          f"clean test accuracy on the batch {float((model.predict(x) == y).float().mean()):.3f}")
    speed(model, x, y, args.steps, args.repeats)
    engine_overhead(model, x, y, args.steps, 10)
    cw_quality(model, x[:args.cw_n], y[:args.cw_n], args.cw_binary, args.cw_steps)


if __name__ == "__main__":
    main()
