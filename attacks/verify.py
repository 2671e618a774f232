"""Checking what an attack returned: the same shape, inside [0, 1], inside its eps-ball.

Every attack's ``__call__`` runs :func:`verify_adversarial` on its result, so a
projection bug (or a third-party library that ignores its budget) fails loudly
instead of producing a too-good robustness number.
"""

from __future__ import annotations

from typing import Optional

import torch

from robench.errors import AttackVerificationError

TOLERANCE = 1e-6


def distances(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample distance ``||x_adv - x||`` in ``norm`` ("Linf", "L2" or "L1"), shape (N,).

    Computed in float64 where the device has it, so rounding in the check itself
    cannot be mistaken for a violation.
    """
    wide = torch.float32 if x.device.type == "mps" else torch.float64
    delta = (x_adv.to(wide) - x.to(wide)).flatten(1)
    if norm == "Linf":
        return delta.abs().amax(dim=1) if delta.shape[1] else delta.new_zeros(len(delta))
    if norm == "L2":
        return delta.norm(dim=1)
    if norm == "L1":
        return delta.abs().sum(dim=1)
    raise ValueError(f"unknown norm {norm!r}")


def verify_adversarial(x: torch.Tensor, x_adv: torch.Tensor, name: str, norm: Optional[str],
                       eps: Optional[float], tol: float = TOLERANCE) -> None:
    """Raise :class:`AttackVerificationError` unless ``x_adv`` is a valid answer for ``x``.

    Args:
        x: (N, C, H, W) clean inputs.
        x_adv: (N, C, H, W) the attack's output.
        name: the attack's name, for the message.
        norm: "Linf", "L2", "L1", or None (no ball to check).
        eps: the budget, or None for an unbounded attack (only [0, 1] is checked).
        tol: absolute slack for float rounding.
    """
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        got = tuple(x_adv.shape) if isinstance(x_adv, torch.Tensor) else type(x_adv).__name__
        raise AttackVerificationError(f"attack {name} returned {got}, expected shape {tuple(x.shape)}")
    if x_adv.numel() == 0:
        return
    if not bool(torch.isfinite(x_adv).all()):
        raise AttackVerificationError(f"attack {name} returned non-finite values (NaN or inf)")
    low, high = (float(v) for v in torch.aminmax(x_adv.detach()))
    if low < -tol or high > 1.0 + tol:
        raise AttackVerificationError(
            f"attack {name} left the [0, 1] input range (min {low:.6g}, max {high:.6g})")
    if norm is None or eps is None:
        return
    dist = distances(x.detach(), x_adv.detach(), norm)
    worst = int(dist.argmax())
    if float(dist[worst]) > eps + tol:
        n_out = int((dist > eps + tol).sum())
        raise AttackVerificationError(
            f"attack {name} left its {norm} ball: {n_out} sample(s) beyond eps={eps:g}, "
            f"worst is sample {worst} at {float(dist[worst]):.6g}")
