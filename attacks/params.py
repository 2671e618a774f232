"""Checking attack arguments, so a bad value ends in one clear ``UsageError``.

Values often come from the command line (``pgd:steps=20,random_start=true``),
already typed by :func:`robench.specs.parse_value`; these checks reject what
is still wrong (a bool where a number belongs, a negative step count, ...).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

from robench.errors import UsageError

NORMS = ("Linf", "L2", "L1")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_number(where: str, name: str, value: Any, minimum: Optional[float] = None,
                 maximum: Optional[float] = None, strict: bool = False) -> float:
    """A finite number in [minimum, maximum] ((minimum, maximum] when ``strict``)."""
    if not _is_number(value) or not math.isfinite(value):
        raise UsageError(f"{where}: {name} must be a finite number, got {value!r}")
    low_bad = minimum is not None and (value <= minimum if strict else value < minimum)
    if low_bad or (maximum is not None and value > maximum):
        low = "(" if strict else "["
        span = f"{low}{minimum if minimum is not None else '-inf'}, {maximum if maximum is not None else 'inf'}]"
        raise UsageError(f"{where}: {name} must be in {span}, got {value!r}")
    return float(value)


def check_int(where: str, name: str, value: Any, minimum: int = 1) -> int:
    """An integer >= ``minimum`` (a float such as 20.0 is accepted when whole)."""
    if _is_number(value) and float(value).is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UsageError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_bool(where: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{where}: {name} must be true or false, got {value!r}")
    return value


def check_choice(where: str, name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        import difflib

        near = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise UsageError(f"{where}: unknown {name} {value!r}{hint} (known: {', '.join(choices)})")
    return value


def input_dim(model: Any) -> Optional[int]:
    """Number of input values per sample (C*H*W) when the model records its input shape."""
    shape = getattr(getattr(model, "info", None), "input_shape", None)
    return int(math.prod(shape)) if shape else None


def check_eps(where: str, eps: Any, norm: Optional[str], model: Any) -> float:
    """The perturbation budget in pixel space ([0, 1] inputs).

    Linf: eps in [0, 1]. L2 / L1: eps in [0, diameter of the [0, 1] cube], i.e.
    sqrt(d) / d for d inputs per sample (MNIST's usual L2 budgets of 1.5-3 are
    above 1, so capping every norm at 1 would forbid standard settings).
    """
    d = input_dim(model)
    maximum: Optional[float] = 1.0
    if norm == "L2":
        maximum = math.sqrt(d) if d else None
    elif norm == "L1":
        maximum = float(d) if d else None
    return check_number(where, "eps", eps, 0.0, maximum)


def check_seed(where: str, seed: Any) -> int:
    return check_int(where, "seed", seed, minimum=0)


def default_step(step_size: Any, eps: float, steps: int, factor: float, where: str) -> float:
    """``step_size`` when given, else ``factor * eps / steps``."""
    if step_size is None:
        return factor * eps / steps
    return check_number(where, "step_size", step_size, 0.0, strict=True)
