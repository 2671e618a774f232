"""FGSM: one signed-gradient step of size eps."""

from __future__ import annotations

from typing import Any

import torch

from robench.attacks.base import GradientAttack


class FGSM(GradientAttack):
    r"""FGSM in the paper 'Explaining and Harnessing Adversarial Examples'
    [https://arxiv.org/abs/1412.6572]

    Distance Measure: Linf

    Arguments:
        model (RobustModel): model to attack (inputs in [0, 1]).
        eps (float): maximum perturbation, in [0, 1].
        objective (str): "ce", "margin", "dlr", "lkd" or "joint". (Default: "ce")
        seed (int): recorded only; FGSM is deterministic. (Default: 0)
        **options: ``targets``, ``eot``, ``update``, ``runtime`` and the joint
            objective's ``detector``, ``fpr``, ``detector_weight`` (see GradientAttack).

    Shape:
        - x: (N, C, H, W) in [0, 1]; y: (N,) labels; output: (N, C, H, W).

    Examples::
        >>> attack = FGSM(model, eps=0.1)
        >>> x_adv = attack(x, y)
    """

    name = "fgsm"
    norm = "Linf"

    def __init__(self, model: torch.nn.Module, eps: float, objective: str = "ce", seed: int = 0,
                 **options: Any) -> None:
        super().__init__(model, eps, objective, seed, **options)

    def _attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._best_of(self._step, x, y, 1)

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        grad = self._gradient(x_adv, y)
        with torch.no_grad():
            return (x + self.eps * grad.sign()).clamp_(0.0, 1.0)
