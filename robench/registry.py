"""One generic registry per kind, filled from entry points on first lookup.

Built-ins and third-party plugins arrive the same way: an entry point in the
group ``robench.<kind>`` whose value is ``module:attr``. Nothing is imported
until an entry is actually used, so ``robench list`` never imports torch.

A name of the form ``family:Member`` (``ta:APGD``, ``art:DeepFool``) is looked
up as the entry ``family``, whose object is a factory taking ``member=``.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Dict, Generic, Iterable, List, Optional, TypeVar

from robench.errors import RobenchError, UnknownNameError

T = TypeVar("T")

KINDS = ("attacks", "defenses", "detectors", "datasets", "archs")


@dataclass
class Entry:
    """One registered name: where it comes from and, once loaded, the object."""

    name: str
    target: str  # "module:attr", or "<python>" for objects registered in code
    provider: str  # distribution name, or "<python>"
    obj: Any = field(default=None, repr=False)

    def load(self) -> Any:
        if self.obj is None:
            module_name, _, attr = self.target.partition(":")
            try:
                module = importlib.import_module(module_name)
                obj = module
                for part in attr.split(".") if attr else []:
                    obj = getattr(obj, part)
            except (ImportError, AttributeError) as exc:
                raise RobenchError(
                    f"cannot load '{self.name}' from {self.target} (provided by {self.provider}): {exc}"
                ) from None
            self.obj = obj
        return self.obj

    def as_dict(self) -> Dict[str, str]:
        return {"name": self.name, "target": self.target, "provider": self.provider}


class Registry(Generic[T]):
    """Names -> lazily loaded objects of one kind (attacks, defenses, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.group = f"robench.{kind}"
        self._entries: Dict[str, Entry] = {}
        self._scanned = False

    # -- filling -----------------------------------------------------------
    def _scan(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        seen = set()
        for dist in metadata.distributions():
            dist_name = dist.metadata["Name"] or "<unknown>"
            for ep in dist.entry_points:
                if ep.group != self.group:
                    continue
                key = (dist_name, ep.name, ep.value)
                if key in seen:  # the same distribution found twice on sys.path
                    continue
                seen.add(key)
                self._add(Entry(ep.name, ep.value, dist_name))

    def _add(self, entry: Entry) -> None:
        old = self._entries.get(entry.name)
        if old is not None and old.target != entry.target:
            raise RobenchError(
                f"duplicate {self.kind[:-1]} name '{entry.name}': provided by "
                f"{old.provider} ({old.target}) and by {entry.provider} ({entry.target})"
            )
        self._entries.setdefault(entry.name, entry)

    def register(self, name: str, obj: Any = None) -> Any:
        """Register ``obj`` under ``name``; used as ``@registry.register("name")``.

        Meant for notebooks and tests; packages use entry points.
        """

        def decorator(thing: Any) -> Any:
            self._scan()
            target = f"{getattr(thing, '__module__', '?')}:{getattr(thing, '__qualname__', repr(thing))}"
            if name in self._entries:
                old = self._entries[name]
                raise RobenchError(
                    f"duplicate {self.kind[:-1]} name '{name}': provided by "
                    f"{old.provider} ({old.target}) and by <python> ({target})"
                )
            self._entries[name] = Entry(name, target, "<python>", thing)
            return thing

        return decorator(obj) if obj is not None else decorator

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    # -- lookup --------------------------------------------------------------
    def names(self, pattern: Optional[str] = None) -> List[str]:
        self._scan()
        names = sorted(self._entries)
        return fnmatch.filter(names, pattern) if pattern else names

    def entries(self, pattern: Optional[str] = None) -> List[Entry]:
        return [self._entries[n] for n in self.names(pattern)]

    def __contains__(self, name: str) -> bool:
        self._scan()
        return name.partition(":")[0] in self._entries if ":" in name else name in self._entries

    def entry(self, name: str) -> Entry:
        self._scan()
        key = name.partition(":")[0] if ":" in name else name
        if key not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries[key]

    def get(self, name: str) -> T:
        """The registered object for ``name`` (for ``family:Member``, the family factory)."""
        return self.entry(name).load()

    def unknown_message(self, name: str) -> str:
        candidates = self.names()
        near = difflib.get_close_matches(name, candidates, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        return (
            f"unknown {self.kind[:-1]} '{name}'{hint} "
            f"(known: {', '.join(candidates) or 'none'})"
        )


_REGISTRIES: Dict[str, Registry] = {kind: Registry(kind) for kind in KINDS}


def registry(kind: str) -> Registry:
    """The registry of ``kind`` (one of ``KINDS``)."""
    if kind not in _REGISTRIES:
        near = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise UnknownNameError(f"unknown kind '{kind}'{hint} (known: {', '.join(KINDS)})")
    return _REGISTRIES[kind]


def register(kind: str, name: str) -> Callable[[T], T]:
    """Decorator: ``@robench.register("defenses", "my-defense")``."""
    return registry(kind).register(name)


def iter_registries() -> Iterable[Registry]:
    return _REGISTRIES.values()
