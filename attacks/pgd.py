"""PGD under Linf: projected gradient ascent from a random start in the eps-ball."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional

import torch

from robench.attacks.base import GradientAttack
from robench.attacks.params import default_step
from robench.params import Range


class PGD(GradientAttack):
    r"""PGD in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks'
    [https://arxiv.org/abs/1706.06083]

    Distance Measure: Linf

    Arguments:
        model (RobustModel): model to attack (inputs in [0, 1]).
        eps (float): maximum perturbation, in [0, 1].
        steps (int): number of steps. (Default: 20)
        step_size (float): step per iteration, in (0, 1]. (Default: 2.5 * eps / steps, so the
            walk can cross the ball and back, as Madry et al. recommend)
        random_start (bool): start at a uniform point of the ball. (Default: True)
        restarts (int): independent runs; per sample the one with the highest
            final objective is kept. (Default: 1)
        objective (str): "ce", "margin", "dlr", "lkd" or "joint". (Default: "ce")
        seed (int): seed of the attack's own generator. (Default: 0)
        **options: ``targets``, ``eot``, ``update``, ``runtime`` and the joint
            objective's ``detector``, ``fpr``, ``detector_weight`` (see GradientAttack).

    Shape:
        - x: (N, C, H, W) in [0, 1]; y: (N,) labels; output: (N, C, H, W).

    Examples::
        >>> attack = PGD(model, eps=0.3, steps=40)
        >>> x_adv = attack(x, y)
    """

    name = "pgd"
    norm = "Linf"
    # A step beyond 1 crosses the whole pixel range: it changes nothing, and overflows float32 far out.
    ranges: ClassVar[Dict[str, Range]] = {**GradientAttack.ranges, "steps": Range(int, 1),
                                          "step_size": Range(float, 0.0, 1.0, low_open=True, optional=True),
                                          "restarts": Range(int, 1)}

    def __init__(self, model: torch.nn.Module, eps: float, steps: int = 20,
                 step_size: Optional[float] = None, random_start: bool = True, restarts: int = 1,
                 objective: str = "ce", seed: int = 0, **options: Any) -> None:
        super().__init__(model, eps, objective, seed, **options)
        self._set(steps=steps, step_size=step_size, random_start=random_start, restarts=restarts)
        self.step_size = self.params["step_size"] = default_step(self.step_size, self.eps, self.steps, 2.5)

    def _attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._best_of(self._attempt, x, y, self.restarts)

    def _attempt(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Ball and [0, 1] box intersect in one box, so projecting is one clamp.
        lower = (x - self.eps).clamp_(min=0.0)
        upper = (x + self.eps).clamp_(max=1.0)
        x_adv = x.clone()
        if self.random_start:
            noise = self._draw("rand", x.shape, x)
            x_adv.add_(noise.mul_(2 * self.eps).sub_(self.eps))
            torch.clamp(x_adv, lower, upper, out=x_adv)
        for _ in range(self.steps):
            grad = self._gradient(x_adv, y)
            with torch.no_grad():  # in place on the leaf: no new tensors per step
                x_adv.add_(grad.sign_(), alpha=self.step_size)
                torch.clamp(x_adv, lower, upper, out=x_adv)
        return x_adv.detach()
