"""APGD: PGD with momentum and a step size that halves when progress stalls (Linf and L2)."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Dict, List

import torch

from robench.attacks.base import GradientAttack
from robench.attacks.projections import per_sample_norm, project_l2, unit_l2
from robench.attacks.search import BestSoFar
from robench.params import Range

MOMENTUM = 0.75  # alpha of the paper


def checkpoints(steps: int) -> List[int]:
    """The iterations after which the step size may halve.

    Fractions of the budget p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
    each checkpoint at ceil(p_j * steps); computed in hundredths so the sums stay exact.
    """
    marks, p, gap = [], 22, 22
    while p <= 100:
        marks.append(math.ceil(p * steps / 100))
        gap = max(gap - 3, 6)
        p += gap
    return sorted({m for m in marks if 0 < m <= steps})


class APGD(GradientAttack):
    r"""APGD in the paper 'Reliable evaluation of adversarial robustness with an ensemble of
    diverse parameter-free attacks' [https://arxiv.org/abs/2003.01690]

    Distance Measure: Linf (``apgd``) or L2 (``apgd-l2``)

    From a random point on the ball, steps of size eta (first 2 * eps) with momentum
    0.75. At each checkpoint (:func:`checkpoints`) a sample's eta halves, and it restarts
    from its best point, when fewer than ``rho`` of its steps since the last checkpoint
    raised the objective, or when neither its eta nor its best objective changed since
    then. Per sample the best point seen is returned (a won point, i.e. misclassified and
    for ``joint`` also unflagged, beats the rest; then the higher objective). APGD-CE is
    ``objective="ce"``, APGD-DLR ``"dlr"``; APGD-T is ``objective="dlr", targets=9``
    (the targeted DLR loss, one run per target).

    Arguments:
        model (RobustModel): model to attack (inputs in [0, 1]).
        eps (float): maximum perturbation (Linf in [0, 1]; L2 in [0, sqrt(C*H*W)]).
        steps (int): iterations per run. (Default: 100)
        restarts (int): independent runs; per sample the worst case is kept. (Default: 1)
        rho (float): the fraction of improving steps below which eta halves. (Default: 0.75)
        objective (str): "ce", "dlr", "margin", "lkd" or "joint". (Default: "ce")
        seed (int): seed of the attack's own generator. (Default: 0)
        **options: ``targets``, ``eot``, ``update``, ``runtime`` and the joint
            objective's ``detector``, ``fpr``, ``detector_weight`` (see GradientAttack).

    Shape:
        - x: (N, C, H, W) in [0, 1]; y: (N,) labels; output: (N, C, H, W).

    Examples::
        >>> attack = APGD(model, eps=0.3, steps=100, objective="dlr", targets=9)
        >>> x_adv = attack(x, y)
    """

    name = "apgd"
    norm = "Linf"
    tracks_itself = True
    ranges: ClassVar[Dict[str, Range]] = {**GradientAttack.ranges, "steps": Range(int, 1),
                                          "restarts": Range(int, 1),
                                          "rho": Range(float, 0.0, 1.0, low_open=True, high_open=True)}

    def __init__(self, model: torch.nn.Module, eps: float, steps: int = 100, restarts: int = 1,
                 rho: float = 0.75, objective: str = "ce", seed: int = 0, **options: Any) -> None:
        super().__init__(model, eps, objective, seed, **options)
        self._set(steps=steps, restarts=restarts, rho=rho)

    def _attack(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._best_of(self._attempt, x, y, self.restarts)

    def _attempt(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.dim() - 1)
        marks, last_mark = set(checkpoints(self.steps)), 0
        eta = x.new_full((len(x),), 2.0 * self.eps).view(shape)
        x_adv = self._start(x)
        grad, loss, won = self._evaluate(x_adv, y)
        x_adv, out = x_adv.detach(), BestSoFar(x)
        out.update(x_adv, loss, won)
        top_x, top_loss, top_grad = x_adv.clone(), loss.clone(), grad.clone()  # best by the objective
        x_prev, ups = x_adv.clone(), torch.zeros_like(loss)
        halved, top_at_mark = torch.ones_like(won), top_loss.clone()
        for i in range(1, self.steps + 1):
            with torch.no_grad():
                x_new = self._step(x_adv, x_prev, grad, eta, x, 1.0 if i == 1 else MOMENTUM)
            x_prev = x_adv
            grad, new_loss, won = self._evaluate(x_new, y)
            x_adv = x_new.detach()
            out.update(x_adv, new_loss, won)
            ups += (new_loss > loss).float()
            loss = new_loss
            better = loss > top_loss
            top_loss = torch.where(better, loss, top_loss)
            top_x = torch.where(better.view(shape), x_adv, top_x)
            top_grad = torch.where(better.view(shape), grad, top_grad)
            if i in marks:
                # The first check has no earlier one to compare with: "unchanged since" cannot hold yet.
                halve = (ups < self.rho * (i - last_mark)) | (~halved & (top_loss <= top_at_mark))
                eta = torch.where(halve.view(shape), eta / 2, eta)
                x_adv = torch.where(halve.view(shape), top_x, x_adv)  # restart from the best point
                x_prev = torch.where(halve.view(shape), top_x, x_prev)  # with no momentum carried over
                grad = torch.where(halve.view(shape), top_grad, grad)
                loss = torch.where(halve, top_loss, loss)
                halved, top_at_mark, last_mark = halve, top_loss.clone(), i
                ups.zero_()
        return out.x

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        """A random point on the ball's surface, clipped to [0, 1]."""
        noise = self._draw("rand", x.shape, x).mul_(2).sub_(1)
        scale = noise.flatten(1).abs().amax(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        return self._project(x + self.eps * noise / scale, x)

    def _step(self, x_adv: torch.Tensor, x_prev: torch.Tensor, grad: torch.Tensor, eta: torch.Tensor,
              x: torch.Tensor, alpha: float) -> torch.Tensor:
        """z = P(x_k + eta * sign(grad)); x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))."""
        z = self._project(x_adv + eta * grad.sign(), x)
        return self._project(x_adv + alpha * (z - x_adv) + (1 - alpha) * (x_adv - x_prev), x)

    def _project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp_(0.0, 1.0)


class APGDL2(APGD):
    r"""APGD under L2 (same paper): steps along the normalised gradient, projected onto the L2 ball
    and the [0, 1] box; random start on the sphere of radius eps. Arguments as :class:`APGD`."""

    name = "apgd-l2"
    norm = "L2"

    def _start(self, x: torch.Tensor) -> torch.Tensor:
        return self._project(x + self.eps * unit_l2(self._draw("randn", x.shape, x)), x)

    def _step(self, x_adv, x_prev, grad, eta, x, alpha):
        z = self._project(x_adv + eta * grad / per_sample_norm(grad).clamp_min(1e-12), x)
        return self._project(x_adv + alpha * (z - x_adv) + (1 - alpha) * (x_adv - x_prev), x)

    def _project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return project_l2(x_adv, x, self.eps)
