"""PGD under L2: normalised-gradient ascent projected onto the L2 ball and the [0, 1] box."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional

import torch

from robench.attacks.base import GradientAttack
from robench.attacks.params import default_step, eps_range
from robench.attacks.pgd import PGD
from robench.attacks.projections import project_l2, unit_l2
from robench.params import Range


class PGDL2(GradientAttack):
    r"""PGD (L2) in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks'
    [https://arxiv.org/abs/1706.06083]

    Distance Measure: L2

    Arguments:
        model (RobustModel): model to attack (inputs in [0, 1]).
        eps (float): maximum L2 perturbation, in [0, sqrt(C*H*W)].
        steps (int): number of steps. (Default: 20)
        step_size (float): L2 length of each step, in (0, sqrt(C*H*W)]. (Default: 2.5 * eps / steps)
        random_start (bool): start at a random point of the ball (Gaussian
            direction, radius uniform in [0, eps]). (Default: True)
        restarts (int): independent runs; per sample the one with the highest
            final objective is kept. (Default: 1)
        objective (str): "ce", "margin", "dlr", "lkd" or "joint". (Default: "ce")
        seed (int): seed of the attack's own generator. (Default: 0)
        **options: ``targets``, ``eot``, ``update``, ``runtime`` and the joint
            objective's ``detector``, ``fpr``, ``detector_weight`` (see GradientAttack).

    Shape:
        - x: (N, C, H, W) in [0, 1]; y: (N,) labels; output: (N, C, H, W).

    Examples::
        >>> attack = PGDL2(model, eps=2.0, steps=40)
        >>> x_adv = attack(x, y)
    """

    name = "pgd-l2"
    norm = "L2"
    # The step's upper bound is the [0, 1] cube's diameter, which depends on the model (checked below).
    ranges: ClassVar[Dict[str, Range]] = {**PGD.ranges, "step_size": Range(float, 0.0, low_open=True, optional=True)}

    def __init__(self, model: torch.nn.Module, eps: float, steps: int = 20,
                 step_size: Optional[float] = None, random_start: bool = True, restarts: int = 1,
                 objective: str = "ce", seed: int = 0, **options: Any) -> None:
        super().__init__(model, eps, objective, seed, **options)
        self._set(steps=steps, step_size=step_size, random_start=random_start, restarts=restarts)
        if self.step_size is not None:
            Range(float, 0.0, eps_range(self.norm, model).high, low_open=True).check(self.name, "step_size", step_size)
        self.step_size = self.params["step_size"] = default_step(self.step_size, self.eps, self.steps, 2.5)

    def _attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._best_of(self._attempt, x, y, self.restarts)

    def _attempt(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        if self.random_start:
            direction = self._draw("randn", x.shape, x)
            radius = self._draw("rand", (len(x),) + (1,) * (x.dim() - 1), x)
            x_adv.add_(unit_l2(direction).mul_(radius * self.eps))
            x_adv.clamp_(0.0, 1.0)
        for _ in range(self.steps):
            grad = self._gradient(x_adv, y)
            with torch.no_grad():
                x_adv.add_(unit_l2(grad), alpha=self.step_size)
                project_l2(x_adv, x, self.eps)
        return x_adv.detach()
