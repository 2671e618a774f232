"""Choosing the device a command runs on."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from robench.errors import UsageError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA GPU is available on this machine (use cpu or auto)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise UsageError(f"--device must be auto, cpu or cuda, got '{name}'")


def prefer_channels_last(model: torch.nn.Module, force: bool = False) -> bool:
    """Convolutional nets on CUDA: weights (and, in the attacks, inputs) in channels_last.

    NHWC is the layout cuDNN's tensor-core kernels want; on CPU it is left off
    unless ``force``. Returns whether the model now uses it (``model.channels_last``).
    """
    device = next(iter(model.parameters()), torch.empty(0)).device
    convolutional = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    if not convolutional or not (force or device.type == "cuda"):
        return False
    model.to(memory_format=torch.channels_last)
    model.channels_last = True
    return True


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run a block with ``n`` torch threads (None: as it is), restoring the count after.

    CPU matrix products split their sums by thread count, so one count for every
    cell (in this process and in Ray workers) keeps the numbers identical wherever a cell runs.
    """
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """On CUDA, deterministic kernels for the block (restored after), so a rerun gives the same bytes.

    cuDNN picks deterministic convolution algorithms (``cudnn.deterministic``, no
    autotuning); cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` set before its first call, so
    it is set here when the caller has not; ``torch.use_deterministic_algorithms`` runs
    in ``warn_only`` mode, so an operation without a deterministic kernel warns instead
    of failing the run. Costs little for attacks (a few percent on convolutions); on
    the CPU nothing changes (its kernels are deterministic at a fixed thread count).
    """
    import os

    if device.type != "cuda":
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
              torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[0], before[1]
        torch.use_deterministic_algorithms(before[2], warn_only=before[3])
