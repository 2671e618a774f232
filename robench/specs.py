"""Parsing ``NAME[:key=value,...]`` specs used for attacks and defenses on the CLI.

``pgd:steps=20,objective=margin`` -> ("pgd", {"steps": 20, "objective": "margin"});
``ta:APGD:n_restarts=2`` -> ("ta:APGD", {"n_restarts": 2}).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Tuple

from robench.errors import UsageError


def parse_value(text: str) -> Any:
    """'3' -> 3, '0.5' -> 0.5, 'true' -> True, 'none' -> None, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            value = cast(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise UsageError(f"value '{text}' is not a finite number")
        return value
    return text.strip()


def parse_kwargs(text: str, where: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"{where}: expected key=value, got '{part}'")
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


def parse_spec(text: str) -> Tuple[str, Dict[str, Any]]:
    """Split a spec into its registry name and keyword arguments."""
    text = text.strip()
    if not text:
        raise UsageError("empty name")
    head, sep, rest = text.partition(":")
    if not sep:
        return head, {}
    if "=" in rest.split(":", 1)[0]:
        return head, parse_kwargs(rest, text)
    member, sep2, kw = rest.partition(":")
    if not member:
        raise UsageError(f"'{text}': expected {head}:Name")
    return f"{head}:{member}", parse_kwargs(kw, text) if sep2 else {}


def format_spec(name: str, kwargs: Dict[str, Any]) -> str:
    if not kwargs:
        return name
    return name + ":" + ",".join(f"{k}={kwargs[k]}" for k in sorted(kwargs))
