"""What is attack-specific in checking arguments: the budget by norm and the default step.

Everything else (unknown names, declared ranges, booleans, choices) goes
through :mod:`robench.params`, the checker every kind shares.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from robench.params import Range

NORMS = ("Linf", "L2", "L1")


def input_dim(model: Any) -> Optional[int]:
    """Number of input values per sample (C*H*W) when the model records its input shape."""
    shape = getattr(getattr(model, "info", None), "input_shape", None)
    return int(math.prod(shape)) if shape else None


def eps_range(norm: Optional[str], model: Any) -> Range:
    """The budgets allowed in ``norm`` for ``model``'s inputs (pixel space, [0, 1] inputs).

    Linf: [0, 1]. L2 / L1: [0, diameter of the [0, 1] cube], i.e. sqrt(d) / d for
    d inputs per sample (MNIST's usual L2 budgets of 1.5-3 are above 1, so capping
    every norm at 1 would forbid standard settings). eps is not in an attack's
    ``ranges``: this range depends on the norm and the model.
    """
    d = input_dim(model)
    high: Optional[float] = 1.0
    if norm == "L2":
        high = math.sqrt(d) if d else None
    elif norm == "L1":
        high = float(d) if d else None
    return Range(float, 0.0, high)


def check_eps(where: str, eps: Any, norm: Optional[str], model: Any) -> float:
    """The perturbation budget, checked against :func:`eps_range`."""
    return eps_range(norm, model).check(where, "eps", eps)


def default_step(step_size: Optional[float], eps: float, steps: int, factor: float) -> float:
    """``step_size`` when given (already range-checked), else ``factor * eps / steps``."""
    return factor * eps / steps if step_size is None else step_size
