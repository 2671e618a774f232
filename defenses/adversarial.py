"""Shared pieces of the research defenses: named presets and training-time adversarial examples.

:func:`linf_pgd` maximises any objective over the Linf ball (the inner
maximisation of adversarial training, with a custom loss where a defense
needs one); :class:`PresetDefense` adds a ``preset`` hyper-parameter
(``preset=quick`` on the CLI) that fills in the values a user did not give.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Dict

import torch
import torch.nn as nn

from robench.defenses.base import Defense
from robench.errors import UsageError

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
    resolved values are what the checkpoint records. Subclasses validate their
    values in :meth:`validate`.
    """

    presets: ClassVar[Dict[str, Dict[str, Any]]] = {"default": {}}

    def __init__(self, dataset: str = "mnist5k", **params: Any) -> None:
        super().__init__(dataset, **params)
        preset = self.params.get("preset", "default")
        if preset not in self.presets:
            raise UsageError(f"defense {self.name}: unknown preset {preset!r} "
                             f"(known: {', '.join(self.presets)})")
        for key, value in self.presets[preset].items():
            if key not in params:
                self.params[key] = value(self.params) if callable(value) else value
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UsageError` for out-of-range values (default: nothing to check)."""

    def require(self, key: str, ok: Callable[[Any], bool], what: str) -> None:
        """Fail with one clear line unless ``ok(self.params[key])``."""
        value = self.params[key]
        if not ok(value):
            raise UsageError(f"defense {self.name}: {key} must be {what}, got {value!r}")

    def require_int(self, key: str, minimum: int) -> int:
        """Check an integer parameter (``7`` or ``7.0``), store it as int and return it."""
        self.require(key, lambda v: float(v).is_integer() and v >= minimum, f"an integer >= {minimum}")
        self.params[key] = int(self.params[key])
        return self.params[key]


class AdversarialDefense(PresetDefense):
    """Base of defenses that train on Linf PGD examples (``eps``, ``step``, ``steps``).

    Defaults follow Madry et al.: MNIST-like data eps 0.3, 40 steps of 0.01;
    CIFAR eps 8/255, 7 steps of 2/255. ``preset=quick`` uses 7 steps of
    2.5 * eps / 7 (enough to reach the ball's surface from any start), which
    trains small-cnn on mnist5k in minutes on a CPU.
    """

    defaults: ClassVar[Dict[str, Any]] = {"preset": "default", "eps": 0.3, "step": 0.01, "steps": 40}
    presets = {"default": {}, "quick": {"steps": 7, "step": lambda p: 2.5 * p["eps"] / p["steps"]}}

    @classmethod
    def default_params(cls, dataset: str) -> Dict[str, Any]:
        if dataset.startswith("cifar"):
            return {**cls.defaults, "eps": 8 / 255, "step": 2 / 255, "steps": 7}
        return dict(cls.defaults)

    def validate(self) -> None:
        self.require("eps", lambda v: 0 <= v <= 1, "in [0, 1]")
        self.require_int("steps", 0)
        self.require("step", lambda v: v > 0, "> 0")

    def perturb(self, model: nn.Module, x: torch.Tensor, objective: Objective) -> torch.Tensor:
        """Training-time adversarial examples for ``objective`` with this defense's eps, step and steps."""
        p = self.params
        return linf_pgd(model, x, objective, p["eps"], p["step"], p["steps"])
