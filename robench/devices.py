"""Choosing the device a command runs on."""

from __future__ import annotations

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
