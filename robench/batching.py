"""``--batch-size auto``: the largest attack batch that fits, measured on the model itself.

An attack step is one forward and one backward pass with respect to the input,
so its memory grows linearly with the batch: ``fixed + batch * per_sample``.

- On CUDA, ``per_sample`` is measured: the allocator's peak for a probe step
  at two batch sizes, differenced so the fixed part (weights, workspaces)
  cancels. The batch is what fits in ``GPU_FRACTION`` of the free memory.
- On CPU there is no allocator to ask, so ``per_sample`` is estimated from
  the activations a probe forward produces (every module's output), times
  ``CPU_OVERHEAD`` for their gradients and temporaries. The budget is
  ``CPU_FRACTION`` of the available memory, or ``ROBENCH_CPU_MEMORY_GB``.

Either way the batch is capped by the points attacked and by ``MAX_BATCH``:
only one batch at a time is ever on the device, never the whole dataset.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from robench.errors import UsageError

GPU_FRACTION = 0.8
CPU_FRACTION = 0.25
CPU_OVERHEAD = 3.0  # activations + their gradients + temporaries of the backward pass
MAX_BATCH = 8192
PROBE = (8, 16)


def parse_batch_size(value) -> "int | str":
    """An integer >= 1 or ``auto`` (the CLI's and suites' batch size)."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        try:
            value = int(text)
        except ValueError:
            raise UsageError(f"--batch-size must be an integer >= 1 or auto, got '{value}'") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"--batch-size must be an integer >= 1 or auto, got {value!r}")
    return value


def auto_batch_size(model: torch.nn.Module, input_shape, n: int,
                    memory_bytes: Optional[int] = None) -> int:
    """The largest batch of one attack step (forward + input backward) that fits.

    Args:
        model: the model, on its device, in eval mode.
        input_shape: (C, H, W) of one input.
        n: the points to be attacked (the batch never exceeds them).
        memory_bytes: the budget; default: measured as described in the module.
    """
    device = next(iter(model.parameters())).device
    if device.type == "cuda":
        per_sample, budget = _cuda_per_sample(model, input_shape, device), memory_bytes
        if budget is None:
            free, _ = torch.cuda.mem_get_info(device)
            budget = int(free * GPU_FRACTION)
    else:
        per_sample = _cpu_per_sample(model, input_shape)
        budget = memory_bytes if memory_bytes is not None else cpu_budget()
    return int(max(1, min(n, MAX_BATCH, budget // max(per_sample, 1))))


def cpu_budget() -> int:
    """Bytes an attack batch may take on CPU: ``ROBENCH_CPU_MEMORY_GB`` or a share of what is free."""
    given = os.environ.get("ROBENCH_CPU_MEMORY_GB")
    if given:
        try:
            gb = float(given)
        except ValueError:
            raise UsageError(f"ROBENCH_CPU_MEMORY_GB must be a number, got '{given}'") from None
        if not gb > 0:
            raise UsageError(f"ROBENCH_CPU_MEMORY_GB must be > 0, got {given}")
        return int(gb * 2**30)
    return int(_available_memory() * CPU_FRACTION)


def _available_memory() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2 * 2**30  # unknown: assume 2 GiB free


def _step(model: torch.nn.Module, x: torch.Tensor) -> None:
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).sum(), x)
    del grad


def _cuda_per_sample(model: torch.nn.Module, input_shape, device: torch.device) -> int:
    peaks = []
    for b in PROBE:
        x = torch.rand((b, *input_shape), device=device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.enable_grad():
            _step(model, x)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
        del x
    return max(1, (peaks[1] - peaks[0]) // (PROBE[1] - PROBE[0]))


def _cpu_per_sample(model: torch.nn.Module, input_shape) -> int:
    total = [0]

    def count(_module, _inputs, output) -> None:
        for t in output if isinstance(output, (tuple, list)) else [output]:
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        b = PROBE[0]
        x = torch.rand((b, *input_shape))
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    per_input = x[0].numel() * x.element_size()
    return int((total[0] / b + per_input) * CPU_OVERHEAD)
