"""Per-sample geometry shared by the L2 attacks: norms, unit steps, projection onto ball and box."""

from __future__ import annotations

import torch


def per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, 1, ..., 1) L2 norms, for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *[1] * (t.dim() - 1))


def unit_l2(t: torch.Tensor) -> torch.Tensor:
    """``t`` scaled to unit L2 norm per sample, in place (zero rows stay zero)."""
    return t.div_(per_sample_norm(t).clamp_min_(1e-12))


def project_l2(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """In place: shrink ``x_adv - x`` onto the eps-ball, then clip to [0, 1]; returns ``x_adv``.

    Clipping after shrinking only moves coordinates toward x, so the result
    stays inside the ball.
    """
    delta = x_adv.sub_(x)
    delta.mul_((eps / per_sample_norm(delta).clamp_min_(1e-12)).clamp_(max=1.0))
    return delta.add_(x).clamp_(0.0, 1.0)
