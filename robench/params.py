"""Checking arguments, so a bad value ends in one clear ``UsageError`` line.

One place for every kind (attacks, defenses, detectors, the run configuration):

* :func:`check_known`: the unknown-argument check, with the nearest known name;
* :class:`Range`: the declared range of a numeric parameter, which both checks
  a value and says, in the error, the parameter, the range and the value::

      pgd: steps must be an integer in [1, inf), got 0
      defense gm: alpha must be a number in [0, inf), got -3

Components declare ``ranges = {"steps": Range(int, 1), ...}`` next to their
defaults; the test suite walks every registered name and every numeric
parameter with an out-of-range value (``Range.outside``), so a new parameter
without a declared range fails a test the day it is added.

Values often come from the command line (``pgd:steps=20``), already typed by
:func:`robench.specs.parse_value`; these checks reject what is still wrong
(a bool where a number belongs, a negative count, NaN, ...).
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from robench.errors import UsageError


def is_number(value: Any) -> bool:
    """An int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_known(where: str, given: Iterable[str], known: Sequence[str], what: str = "argument") -> None:
    """Raise one line for names in ``given`` that are not in ``known`` (suggesting the nearest)."""
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    near = difflib.get_close_matches(unknown[0], list(known), n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    plural = "s" if len(unknown) > 1 else ""
    raise UsageError(f"{where}: unknown {what}{plural} {', '.join(unknown)}{hint}; "
                     f"known: {', '.join(sorted(known)) or 'none'}")


@dataclass(frozen=True)
class Range:
    """The allowed values of one numeric parameter.

    Args:
        kind: ``int`` or ``float`` (an int is a valid float; a whole float such
            as 20.0 is a valid int).
        low, high: bounds (None: unbounded on that side).
        low_open, high_open: whether the bound itself is excluded.
        optional: None is allowed (the parameter's "automatic" value).
    """

    kind: type = float
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False
    optional: bool = False

    def __str__(self) -> str:
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"{left}{low}, {high}{right}"

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def check(self, where: str, name: str, value: Any) -> Any:
        """``value`` typed as ``kind`` (or None when optional); UsageError otherwise."""
        if value is None and self.optional:
            return None
        noun = "an integer" if self.kind is int else "a number"
        if self.kind is int and is_number(value) and math.isfinite(value) and float(value).is_integer():
            value = int(value)
        ok = is_number(value) and math.isfinite(value) and (self.kind is not int or isinstance(value, int))
        if not ok or not self.contains(value):
            extra = " or none" if self.optional else ""
            raise UsageError(f"{where}: {name} must be {noun} in {self}{extra}, got {value!r}")
        return int(value) if self.kind is int else float(value)

    def outside(self) -> List[float]:
        """Values just outside the range (for tests that walk every parameter)."""
        step = 1 if self.kind is int else 1e-3
        values: List[float] = [float("nan")] if self.kind is float else [0.5]
        if self.low is not None:
            values.append(self.low if self.low_open else self.low - step)
        if self.high is not None:
            values.append(self.high if self.high_open else self.high + step)
        return values


def check_params(where: str, values: Mapping[str, Any], ranges: Mapping[str, Range]) -> Dict[str, Any]:
    """``values`` with every entry that has a declared range checked and typed."""
    return {k: ranges[k].check(where, k, v) if k in ranges else v for k, v in values.items()}


# -- the common cases, as functions --------------------------------------------------

def check_number(where: str, name: str, value: Any, minimum: Optional[float] = None,
                 maximum: Optional[float] = None, strict: bool = False) -> float:
    """A finite number in [minimum, maximum] ((minimum, maximum] when ``strict``)."""
    return Range(float, minimum, maximum, low_open=strict).check(where, name, value)


def check_int(where: str, name: str, value: Any, minimum: int = 1, maximum: Optional[int] = None) -> int:
    """An integer in [minimum, maximum] (a float such as 20.0 is accepted when whole)."""
    return Range(int, minimum, maximum).check(where, name, value)


def check_bool(where: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{where}: {name} must be true or false, got {value!r}")
    return value


def check_choice(where: str, name: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        near = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise UsageError(f"{where}: unknown {name} {value!r}{hint} (known: {', '.join(choices)})")
    return value
