"""MIM (MI-FGSM): iterative FGSM with an accumulated, L1-normalised gradient."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional

import torch

from robench.attacks.base import GradientAttack
from robench.attacks.params import default_step
from robench.params import Range


class MIM(GradientAttack):
    r"""MI-FGSM in the paper 'Boosting Adversarial Attacks with Momentum'
    [https://arxiv.org/abs/1710.06081]

    Distance Measure: Linf

    Arguments:
        model (RobustModel): model to attack (inputs in [0, 1]).
        eps (float): maximum perturbation, in [0, 1].
        steps (int): number of iterations. (Default: 10, as in the paper)
        step_size (float): step per iteration, in (0, 1]. (Default: eps / steps, as in the paper)
        decay (float): momentum factor mu. (Default: 1.0)
        objective (str): "ce", "margin", "dlr", "lkd" or "joint". (Default: "ce")
        seed (int): recorded only; MIM is deterministic. (Default: 0)
        **options: ``targets``, ``eot``, ``update``, ``runtime`` and the joint
            objective's ``detector``, ``fpr``, ``detector_weight`` (see GradientAttack).

    Shape:
        - x: (N, C, H, W) in [0, 1]; y: (N,) labels; output: (N, C, H, W).

    Examples::
        >>> attack = MIM(model, eps=0.3, steps=10, decay=1.0)
        >>> x_adv = attack(x, y)
    """

    name = "mim"
    norm = "Linf"
    ranges: ClassVar[Dict[str, Range]] = {**GradientAttack.ranges, "steps": Range(int, 1),
                                          "step_size": Range(float, 0.0, 1.0, low_open=True, optional=True),
                                          "decay": Range(float, 0.0)}

    def __init__(self, model: torch.nn.Module, eps: float, steps: int = 10,
                 step_size: Optional[float] = None, decay: float = 1.0, objective: str = "ce",
                 seed: int = 0, **options: Any) -> None:
        super().__init__(model, eps, objective, seed, **options)
        self._set(steps=steps, step_size=step_size, decay=decay)
        self.step_size = self.params["step_size"] = default_step(self.step_size, self.eps, self.steps, 1.0)

    def _attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._best_of(self._attempt, x, y, 1)

    def _attempt(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        lower = (x - self.eps).clamp_(min=0.0)
        upper = (x + self.eps).clamp_(max=1.0)
        x_adv = x.clone()
        momentum = torch.zeros_like(x)
        dims = tuple(range(1, x.dim()))
        for _ in range(self.steps):
            grad = self._gradient(x_adv, y)
            with torch.no_grad():
                # Per-sample L1 normalisation keeps one sample's scale from dominating the sum.
                grad.div_(grad.abs().mean(dim=dims, keepdim=True).clamp_min_(1e-12))
                momentum.mul_(self.decay).add_(grad)
                x_adv.add_(momentum.sign(), alpha=self.step_size)
                torch.clamp(x_adv, lower, upper, out=x_adv)
        return x_adv.detach()
