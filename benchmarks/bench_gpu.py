"""PGD-20 on ResNet-20 with CIFAR-10-shaped data: robench's GPU path against torchattacks, images/s.

Both attack the same model on the same GPU, on the same 10,000 images, in the
same batches, side by side in one process (interleaved repeats, best counts).
robench runs as ``robench attack --device cuda`` does: inputs copied once per
batch from pinned host memory, the model in channels_last, and optionally
bf16 autocast (``--amp``) and ``torch.compile`` (``--compile``). Robust
accuracies are printed beside the speeds (they should agree within 0.5 points).

Random weights are fine for speed; pass ``--checkpoint`` for a trained
ResNet-20 and ``--data cifar10:PATH`` for real images.

Also C&W-L2 and APGD images/s (robench native, torchattacks' APGD beside it), and what
``--batch-size auto`` picks with the peak memory of one PGD batch at that size.

Run on a machine with a GPU::

    .venv/bin/python benchmarks/bench_gpu.py | tee benchmarks/results/pgd_resnet20_gpu.txt

``--device cpu --n 64 --steps 2 --repeats 1`` checks the script itself on a machine without one.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eps", type=float, default=8 / 255)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--data", default=None, help="cifar10:PATH (default: uniform random images)")
    p.add_argument("--device", default="cuda", help="cuda (the figure) or cpu (a smoke run of the script)")
    return p.parse_args()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(args):
    from robench.archs import ResNet20
    from robench.models import ModelInfo, RobustModel

    if args.checkpoint:
        from robench.checkpoints import load_model

        model = load_model(args.checkpoint, device=args.device)
    else:
        torch.manual_seed(0)
        info = ModelInfo("resnet20", {"head": "linear"}, "softmax", {}, "cifar10", 10, 64, (3, 32, 32),
                         (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        model = RobustModel(ResNet20(head="linear"), info).freeze().to(args.device)
    if args.data:
        from robench.data import load_dataset

        x, y = load_dataset(args.data).split("test", args.n)
    else:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((args.n, 3, 32, 32), generator=gen)
        with torch.no_grad():  # labels the model gets right, so the attack has work to do
            y = torch.cat([model(xb.to(args.device)).argmax(1).cpu() for xb in x.split(1000)])
    return model, x, y


def run_robench(model, x, y, args, name="pgd", amp=None, compile_=False, **kwargs):
    """Robust accuracy of a robench attack, run the way ``robench attack`` runs it (pinned batches)."""
    from robench.attacks import Runtime, create_attack

    kwargs = kwargs or {"steps": args.steps}
    attack = create_attack(name, model, eps=args.eps, seed=0, runtime=Runtime(amp=amp, compile=compile_), **kwargs)
    xp = x.pin_memory() if args.device.startswith("cuda") else x
    correct = 0
    for xb, yb in zip(xp.split(args.batch_size), y.split(args.batch_size)):
        x_adv = attack(xb, yb)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1).cpu() == yb).sum())
    sync(args.device)
    return correct / len(y)


def run_torchattacks(model, x, y, args, name="PGD"):
    import torchattacks

    if name == "PGD":
        attack = torchattacks.PGD(model, eps=args.eps, alpha=2.5 * args.eps / args.steps, steps=args.steps,
                                  random_start=True)
    else:
        attack = torchattacks.APGD(model, eps=args.eps, steps=args.steps, seed=0)
    correct = 0
    for xb, yb in zip(x.split(args.batch_size), y.split(args.batch_size)):
        x_adv = attack(xb.to(args.device), yb.to(args.device))
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1).cpu() == yb).sum())
    sync(args.device)
    return correct / len(y)


def auto_batch(model, args) -> str:
    """What ``--batch-size auto`` picks for PGD on this model, and one batch's peak memory at it."""
    from robench.batching import auto_batch_size

    size = auto_batch_size(model, (3, 32, 32), args.n)
    if not args.device.startswith("cuda"):
        return f"--batch-size auto: {size} (CPU estimate)"
    from robench.attacks import create_attack

    torch.cuda.reset_peak_memory_stats()
    x = torch.rand((size, 3, 32, 32), device=args.device)
    with torch.no_grad():
        y = model(x).argmax(1)
    create_attack("pgd", model, eps=args.eps, steps=2, seed=0)(x, y)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2 ** 30
    total = torch.cuda.get_device_properties(0).total_memory / 2 ** 30
    return f"--batch-size auto: {size} points; peak memory of one PGD batch at that size {peak:.1f} of {total:.0f} GiB"


def main() -> None:
    import copy

    from robench.devices import prefer_channels_last

    args = parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (or --device cpu for a smoke run)")
    model, x, y = build(args)
    nhwc = copy.deepcopy(model)
    prefer_channels_last(nhwc)
    methods = {
        "torchattacks PGD": lambda: run_torchattacks(model, x, y, args),
        "robench pgd (fp32, NCHW)": lambda: run_robench(model, x, y, args),
        "robench pgd (fp32, channels_last)": lambda: run_robench(nhwc, x, y, args),
        "robench pgd (bf16, channels_last)": lambda: run_robench(nhwc, x, y, args, amp="bf16"),
        "robench pgd (bf16, channels_last, compile)": lambda: run_robench(nhwc, x, y, args, amp="bf16",
                                                                          compile_=True),
        "robench cw-l2 (5 x 20, channels_last)": lambda: run_robench(
            nhwc, x, y, args, "cw-l2", binary_search_steps=5, steps=20),
        "torchattacks APGD (ce)": lambda: run_torchattacks(model, x, y, args, "APGD"),
        "robench apgd (ce, channels_last)": lambda: run_robench(nhwc, x, y, args, "apgd", steps=args.steps),
    }
    for fn in methods.values():  # warm-up: cuDNN autotuning, compilation
        fn()
    best = {name: float("inf") for name in methods}
    acc = {}
    for _ in range(args.repeats):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            acc[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    print("# PGD on ResNet-20, CIFAR-10-shaped data")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"device: {name}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"{args.n} images, batch {args.batch_size}, PGD-{args.steps} Linf eps {args.eps:.5f}, "
          f"{'trained ' + args.checkpoint if args.checkpoint else 'random weights'}; best of {args.repeats}\n")
    ref = args.n / best["torchattacks PGD"]
    print(f"{'method':44s} {'images/s':>10s} {'vs torchattacks PGD':>20s} {'robust acc':>11s}")
    for name in methods:
        rate = args.n / best[name]
        print(f"{name:44s} {rate:10.0f} {rate / ref:19.2f}x {acc[name]:11.4f}")
    print()
    print(auto_batch(nhwc, args))


if __name__ == "__main__":
    main()
