"""Checking a suite file's structure: problems with their lines, key and type checks."""

from __future__ import annotations

import difflib
from typing import Any, Dict, Optional, Tuple

from robench.errors import RobenchError, UsageError

Path_ = Tuple[Any, ...]  # a place in the file: ("models", 0, "train", "epochs")


class SuiteError(UsageError):
    """All problems of a suite file, each with its line."""


class Problems:
    """Collects problems with the line of the node they concern (or the command-line option)."""

    def __init__(self, lines: Dict[Path_, int], overridden: set) -> None:
        self.lines, self.overridden, self.items = lines, overridden, []

    def add(self, where: Path_, message: str) -> None:
        if where and where[0] in self.overridden:
            self.items.append((0, f"--{str(where[0]).replace('_', '-')}: {message}"))
            return
        for depth in range(len(where), -1, -1):  # the deepest place the file has a line for
            if where[:depth] in self.lines:
                line = self.lines[where[:depth]]
                self.items.append((line, f"line {line}: {message}"))
                return
        self.items.append((0, message))

    def raise_if_any(self, source: str) -> None:
        if self.items:
            found = [m for _, m in sorted(self.items, key=lambda item: item[0])]
            raise SuiteError(f"suite {source}: {len(found)} problem(s): " + "; ".join(found))


def node_lines(node, where: Path_ = (), seen: Optional[set] = None) -> Dict[Path_, int]:
    """Line (1-based) of every mapping key and sequence item in a composed YAML tree."""
    import yaml

    seen = set() if seen is None else seen
    lines = {where: node.start_mark.line + 1}
    if id(node) in seen:  # an alias of an enclosing node (a recursive anchor)
        return lines
    seen = seen | {id(node)}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark)
            lines.update(node_lines(value, where + (name,), seen))
            lines[where + (name,)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(node_lines(item, where + (i,), seen))
    return lines


def check_keys(data: Dict[str, Any], schema: Dict[str, Any], where: Path_, problems: Problems) -> None:
    """Unknown keys (with the nearest known one) and wrong types, each at its own line."""
    label = ".".join(str(w) if isinstance(w, str) else f"[{w}]" for w in where).replace(".[", "[")
    prefix = f"{label}." if label else ""
    for key, value in data.items():
        if key not in schema:
            near = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            problems.add(where + (key,), f"unknown key '{prefix}{key}'{hint}")
        elif value is not None and not is_type(value, schema[key]):
            problems.add(where + (key,), f"'{prefix}{key}' must be {_type_name(schema[key])}, "
                                         f"got {type(value).__name__}")


def is_type(value: Any, types: Any) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _type_name(types: Any) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {str: "a string", list: "a list", dict: "a mapping", int: "an integer", float: "a number", bool: "true/false"}
    return " or ".join(names.get(t, t.__name__) for t in dict.fromkeys(types))


def known(kind: str, name: str, where: Path_, problems: Problems) -> bool:
    """Whether ``name`` is registered as a ``kind``; if not, the registry's line is added."""
    from robench.registry import registry

    try:
        registry(kind).entry(name)
    except RobenchError as exc:
        problems.add(where, str(exc))
        return False
    return True


__all__ = ["Problems", "node_lines", "check_keys", "is_type", "known", "Path_", "UsageError"]
