"""Shared pieces of the research defenses: named presets and training-time adversarial examples.

:func:`linf_pgd` maximises any objective over the Linf ball (the inner
maximisation of adversarial training, with a custom loss where a defense
needs one); :class:`PresetDefense` adds a ``preset`` hyper-parameter
(``preset=quick`` on the CLI) that fills in the values a user did not give;
:class:`AdversarialDefense` is the base of defenses that train on PGD
examples, with the eps warm-up they share.
"""

from __future__ import annotations

import math
from typing import Any, Callable, ClassVar, Dict, Mapping

import torch
import torch.nn as nn

from robench.defenses.base import Defense
from robench.errors import UsageError
from robench.params import Range

Objective = Callable[[torch.Tensor], torch.Tensor]


def linf_pgd(model: nn.Module, x: torch.Tensor, objective: Objective, eps: float, step: float,
             steps: int, random_start: bool = True) -> torch.Tensor:
    """Maximise ``objective(x_adv)`` over ``||x_adv - x||_inf <= eps`` inside [0, 1] by signed-gradient ascent.

    The model is in eval mode during the search (batch-norm statistics and
    dropout are not driven by the adversary, as in TRADES' and most PyTorch
    adversarial-training code) and goes back to its previous mode after. Only
    the input's gradient is computed, so parameter ``.grad`` is untouched. The
    random start draws from torch's default generator, which training forks.

    Args:
        model: the network (its mode is restored on exit).
        x: (N, C, H, W) clean inputs in [0, 1].
        objective: maps a batch of candidates to the scalar to maximise
            (a mean of per-sample losses: the signed step is per pixel, so the scale does not matter).
        eps: Linf radius in pixel space; 0 returns ``x``.
        step: step size.
        steps: number of ascent steps; 0 returns ``x``.
        random_start: start from a uniform point in the ball (Madry et al.).

    Returns:
        The (N, C, H, W) adversarial batch, detached.
    """
    x0 = x.detach()
    if eps <= 0 or steps <= 0:
        return x0
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            x_adv = x0 + torch.empty_like(x0).uniform_(-eps, eps) if random_start else x0.clone()
            x_adv = x_adv.clamp(0.0, 1.0)
            for _ in range(steps):
                x_adv.requires_grad_(True)
                (grad,) = torch.autograd.grad(objective(x_adv), x_adv)
                x_adv = x_adv.detach() + step * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x0 - eps), x0 + eps).clamp(0.0, 1.0)
    finally:
        model.train(was_training)
    return x_adv.detach()


class PresetDefense(Defense):
    """A defense with named presets of hyper-parameters (parameter ``preset``).

    ``presets`` maps a preset name to overrides; an override may be a function
    of the resolved parameters (``lambda p: 2.5 * p["eps"] / p["steps"]``),
    evaluated in order. Values the user gives explicitly always win, and the
    resolved values are what the checkpoint records (and are range-checked).
    """

    presets: ClassVar[Dict[str, Dict[str, Any]]] = {"default": {}}

    def resolve(self, given: Mapping[str, Any]) -> Dict[str, Any]:
        params = dict(self.params)
        preset = params.get("preset", "default")
        if preset not in self.presets:
            raise UsageError(f"{self.where}: unknown preset {preset!r} (known: {', '.join(self.presets)})")
        for key, value in self.presets[preset].items():
            if key not in given:
                params[key] = value(params) if callable(value) else value
        return params


class AdversarialDefense(PresetDefense):
    """Base of defenses that train on Linf PGD examples (``eps``, ``step``, ``steps``, ``warmup_epochs``).

    Defaults follow Madry et al.: MNIST-like data eps 0.3, 40 steps of 0.01;
    CIFAR eps 8/255, 7 steps of 2/255. ``preset=quick`` uses 7 steps of
    2.5 * eps / 7 (enough to reach the ball's surface from any start), which
    trains small-cnn on mnist5k in minutes on a CPU.

    Warm-up: the training radius rises linearly, batch by batch, from 0 to
    ``eps`` over the first ``warmup_epochs`` epochs (the step size with it, so
    the search keeps its shape), as adversarial-training code commonly does
    (e.g. Gowal et al. 2018, "On the Effectiveness of Interval Bound
    Propagation", https://arxiv.org/abs/1810.12715; Wong et al. 2020, "Fast is
    better than free", https://arxiv.org/abs/2001.03994). From a random
    network, PGD at eps 0.3 on the first step leaves nothing to learn from:
    on mnist5k, 3 epochs of pgd-at at the paper's settings ended at 18% clean
    accuracy without warm-up (issue 15) and at 92.3% with it; ``preset=quick``
    (10 epochs) reached 97.0% clean and 87.3% under torchattacks' PGD-20 at
    eps 0.2 (1,000 test points). ``warmup_epochs=0`` trains at full eps from
    the first batch.
    """

    defaults: ClassVar[Dict[str, Any]] = {"preset": "default", "eps": 0.3, "step": 0.01, "steps": 40,
                                          "warmup_epochs": 1.0}
    ranges: ClassVar[Dict[str, Range]] = {"eps": Range(float, 0, 1), "step": Range(float, 0, low_open=True),
                                          "steps": Range(int, 1), "warmup_epochs": Range(float, 0)}
    presets = {"default": {}, "quick": {"steps": 7, "step": lambda p: 2.5 * p["eps"] / p["steps"]}}

    @classmethod
    def default_params(cls, dataset: str) -> Dict[str, Any]:
        if dataset.startswith("cifar"):
            return {**cls.defaults, "eps": 8 / 255, "step": 2 / 255, "steps": 7}
        return dict(cls.defaults)

    def warmup(self, progress: float) -> float:
        """The fraction of ``eps`` used at ``progress`` epochs into training (0 to 1)."""
        epochs = self.params["warmup_epochs"]
        return min(1.0, max(0.0, progress) / epochs) if epochs > 0 else 1.0

    def perturb(self, model: nn.Module, x: torch.Tensor, objective: Objective,
                progress: float = math.inf) -> torch.Tensor:
        """Training-time adversarial examples for ``objective`` at this defense's (warmed-up) eps and step."""
        p = self.params
        scale = self.warmup(progress)
        return linf_pgd(model, x, objective, scale * p["eps"], scale * p["step"], p["steps"])
