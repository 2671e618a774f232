"""Are a model's input gradients random? The check behind "gradients are deterministic or eot is used".

Expectation over Transformation (EoT, Athalye, Carlini, Wagner, ICML 2018,
https://arxiv.org/abs/1802.00420): against a randomised model or detector a
single gradient is one draw of a random vector, and an attack that follows it
is weaker than the defense deserves credit for. Every gradient attack takes
``eot=N`` to average N draws; :func:`gradient_spread` measures whether that is
needed.

Example::

    >>> spread = gradient_spread(model, x[:64], y[:64], draws=8)
    >>> spread < 1e-6  # deterministic: eot=1 is enough
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from robench.attacks.adaptive import bpda_input


def gradient_spread(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int = 8,
                    detector: Optional[Any] = None) -> float:
    """Relative variance of input gradients across repeated draws, in eval mode.

    ``sum_i ||g_i - mean(g)||^2 / (draws * ||mean(g)||^2)`` over the batch, where
    ``g_i`` is the gradient of the summed cross-entropy (or, with ``detector``, of
    its score, through its input step by BPDA) in draw i. 0 for a deterministic
    model; of order 1 or more when the gradient's direction is mostly noise.

    Args:
        model: a RobustModel (or any module mapping [0, 1] inputs to logits).
        x: (N, C, H, W) inputs in [0, 1].
        y: (N,) labels.
        draws: number of forward/backward draws, >= 2.
        detector: optional fitted detector (``score_from``): measure its score's gradient.

    Returns:
        The relative variance (a float >= 0).
    """
    if draws < 2:
        raise ValueError("gradient_spread needs at least 2 draws")
    device = next(iter(model.parameters()), torch.empty(0)).device
    x, y = x.detach().to(device), y.to(device)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            grads = torch.stack([_one_gradient(model, x, y, detector) for _ in range(draws)])
    finally:
        for module, training in modes:
            module.training = training
    mean = grads.mean(dim=0)
    spread = (grads - mean).pow(2).sum() / draws
    return float(spread / mean.pow(2).sum().clamp_min(1e-30))


def _one_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, detector: Optional[Any]) -> torch.Tensor:
    x_req = x.clone().requires_grad_(True)
    if detector is None:
        loss = F.cross_entropy(model(x_req), y, reduction="sum")
    else:
        x_in = bpda_input(detector, x_req)
        features, logits = model.features_and_logits(x_req if x_in is None else x_in)
        loss = detector.score_from(features, logits).sum()
    (grad,) = torch.autograd.grad(loss, x_req)
    return grad.detach()
