"""PGD under L2: normalised-gradient ascent projected onto the L2 ball and the [0, 1] box."""

from __future__ import annotations

from typing import Any, Optional

import torch

from robench.attacks.base import GradientAttack
from robench.attacks.params import check_bool, check_int, default_step


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, 1, ..., 1) L2 norms, for broadcasting."""
    return t.flatten(1).norm(dim=1).view(-1, *[1] * (t.dim() - 1))


class PGDL2(GradientAttack):
    r"""PGD (L2) in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks'
    [https://arxiv.org/abs/1706.06083]

    Distance Measure: L2

    Arguments:
        model (RobustModel): model to attack (inputs in [0, 1]).
        eps (float): maximum L2 perturbation, in [0, sqrt(C*H*W)].
        steps (int): number of steps. (Default: 20)
        step_size (float): L2 length of each step. (Default: 2.5 * eps / steps)
        random_start (bool): start at a random point of the ball (Gaussian
            direction, radius uniform in [0, eps]). (Default: True)
        restarts (int): independent runs; per sample the one with the highest
            final objective is kept. (Default: 1)
        objective (str): "ce", "margin", "lkd" or "joint". (Default: "ce")
        seed (int): seed of the attack's own generator. (Default: 0)
        **objective_options: ``detector``, ``fpr``, ``detector_weight`` for "joint".

    Shape:
        - x: (N, C, H, W) in [0, 1]; y: (N,) labels; output: (N, C, H, W).

    Examples::
        >>> attack = PGDL2(model, eps=2.0, steps=40)
        >>> x_adv = attack(x, y)
    """

    name = "pgd-l2"
    norm = "L2"

    def __init__(self, model: torch.nn.Module, eps: float, steps: int = 20,
                 step_size: Optional[float] = None, random_start: bool = True, restarts: int = 1,
                 objective: str = "ce", seed: int = 0, **objective_options: Any) -> None:
        super().__init__(model, eps, objective, seed, **objective_options)
        self.steps = check_int(self.name, "steps", steps)
        self.step_size = default_step(step_size, self.eps, self.steps, 2.5, self.name)
        self.random_start = check_bool(self.name, "random_start", random_start)
        self.restarts = check_int(self.name, "restarts", restarts)
        self.params.update(steps=self.steps, step_size=self.step_size,
                           random_start=self.random_start, restarts=self.restarts)

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._best_of(self._attempt, x, y, self.restarts)

    def _attempt(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = x.clone()
        if self.random_start:
            direction = self._draw("randn", x.shape, x)
            radius = self._draw("rand", (len(x),) + (1,) * (x.dim() - 1), x)
            x_adv.add_(direction.mul_(radius * self.eps / _per_sample_norm(direction).clamp_min_(1e-12)))
            x_adv.clamp_(0.0, 1.0)
        for _ in range(self.steps):
            grad = self._gradient(x_adv, y)
            with torch.no_grad():
                x_adv.add_(grad.div_(_per_sample_norm(grad).clamp_min_(1e-12)), alpha=self.step_size)
                self._project(x_adv, x)
        return x_adv.detach()

    def _project(self, x_adv: torch.Tensor, x: torch.Tensor) -> None:
        """In place: shrink x_adv - x onto the eps-ball, then clip to [0, 1].

        Clipping after shrinking only moves coordinates toward x, so the result
        stays inside the ball.
        """
        delta = x_adv.sub_(x)
        delta.mul_((self.eps / _per_sample_norm(delta).clamp_min_(1e-12)).clamp_(max=1.0))
        delta.add_(x).clamp_(0.0, 1.0)
