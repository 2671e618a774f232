"""PGD-20 on ResNet-20 with CIFAR-10-shaped data: robench's GPU path against torchattacks, images/s.

Both attack the same model on the same GPU, on the same 10,000 images, in the
same batches, side by side in one process (interleaved repeats, best counts).
robench runs as ``robench attack --device cuda`` does: inputs copied once per
batch from pinned host memory, the model in channels_last, and optionally
bf16 autocast (``--amp``) and ``torch.compile`` (``--compile``). Robust
accuracies are printed beside the speeds (they should agree within 0.5 points).

Random weights are fine for speed; pass ``--checkpoint`` for a trained
ResNet-20 and ``--data cifar10:PATH`` for real images.

Run on a machine with a GPU::

    .venv/bin/python benchmarks/bench_gpu.py | tee benchmarks/results/pgd_resnet20_gpu.txt
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
    return p.parse_args()


def build(args):
    from robench.archs import ResNet20
    from robench.models import ModelInfo, RobustModel

    if args.checkpoint:
        from robench.checkpoints import load_model

        model = load_model(args.checkpoint, device="cuda")
    else:
        torch.manual_seed(0)
        info = ModelInfo("resnet20", {"head": "linear"}, "softmax", {}, "cifar10", 10, 64, (3, 32, 32),
                         (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        model = RobustModel(ResNet20(head="linear"), info).freeze().cuda()
    if args.data:
        from robench.data import load_dataset

        x, y = load_dataset(args.data).split("test", args.n)
    else:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand((args.n, 3, 32, 32), generator=gen)
        with torch.no_grad():  # labels the model gets right, so the attack has work to do
            y = torch.cat([model(xb.cuda()).argmax(1).cpu() for xb in x.split(1000)])
    return model, x, y


def run_robench(model, x, y, args, amp=None, compile_=False):
    from robench.attacks import create_attack

    attack = create_attack("pgd", model, eps=args.eps, steps=args.steps, seed=0)
    attack.amp, attack.compile = amp, compile_
    xp = x.pin_memory()
    correct = 0
    for xb, yb in zip(xp.split(args.batch_size), y.split(args.batch_size)):
        x_adv = attack(xb, yb)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1).cpu() == yb).sum())
    torch.cuda.synchronize()
    return correct / len(y)


def run_torchattacks(model, x, y, args):
    import torchattacks

    attack = torchattacks.PGD(model, eps=args.eps, alpha=2.5 * args.eps / args.steps, steps=args.steps,
                              random_start=True)
    correct = 0
    for xb, yb in zip(x.split(args.batch_size), y.split(args.batch_size)):
        x_adv = attack(xb.cuda(), yb.cuda())
        with torch.no_grad():
            correct += int((model(x_adv).argmax(1).cpu() == yb).sum())
    torch.cuda.synchronize()
    return correct / len(y)


def main() -> None:
    import copy

    from robench.devices import prefer_channels_last

    args = parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    model, x, y = build(args)
    nhwc = copy.deepcopy(model)
    prefer_channels_last(nhwc)
    methods = {
        "torchattacks PGD": lambda: run_torchattacks(model, x, y, args),
        "robench pgd (fp32, NCHW)": lambda: run_robench(model, x, y, args),
        "robench pgd (fp32, channels_last)": lambda: run_robench(nhwc, x, y, args),
        "robench pgd (bf16, channels_last)": lambda: run_robench(nhwc, x, y, args, amp=torch.bfloat16),
        "robench pgd (bf16, channels_last, compile)": lambda: run_robench(nhwc, x, y, args, amp=torch.bfloat16,
                                                                          compile_=True),
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
    print("# PGD on ResNet-20, CIFAR-10-shaped data, GPU")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, python {platform.python_version()}")
    print(f"{args.n} images, batch {args.batch_size}, PGD-{args.steps} Linf eps {args.eps:.5f}, "
          f"{'trained ' + args.checkpoint if args.checkpoint else 'random weights'}; best of {args.repeats}\n")
    ref = args.n / best["torchattacks PGD"]
    print(f"{'method':44s} {'images/s':>10s} {'vs torchattacks':>16s} {'robust acc':>11s}")
    for name in methods:
        rate = args.n / best[name]
        print(f"{name:44s} {rate:10.0f} {rate / ref:15.2f}x {acc[name]:11.4f}")


if __name__ == "__main__":
    main()
