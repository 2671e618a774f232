"""How an attack runs its forward passes (not what it computes), fixed when the attack is built.

:class:`Runtime` bundles the speed switches of a run: bf16 autocast, ``torch.compile``
and cascaded restarts. They are given to :func:`robench.attacks.create_attack`
(``runtime=Runtime(amp="bf16")``) and never set on an attack afterwards, so an
attack that cannot honour one says so when it is built. Each attack class lists
the options it honours in ``supports``.

Examples::
    >>> attack = create_attack("pgd", model, eps=0.3, runtime=Runtime(amp="bf16", cascade=True))
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, fields
from typing import Any, Callable, Optional, Tuple

from robench.errors import UsageError

AMP_DTYPES = ("bf16",)


@dataclass(frozen=True)
class Runtime:
    """Runtime options of an attack.

    Args:
        amp: "bf16": forward passes under bfloat16 autocast (outputs come back in
            float32); None: full precision.
        compile: forward passes through ``torch.compile`` (compiled once per model).
        cascade: restarts (and later targets) run only on the rows not yet won.
    """

    amp: Optional[str] = None
    compile: bool = False
    cascade: bool = False

    def __post_init__(self) -> None:
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise UsageError(f"runtime: amp must be one of {', '.join(AMP_DTYPES)} or none, got {self.amp!r}")
        for name in ("compile", "cascade"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"runtime: {name} must be true or false, got {getattr(self, name)!r}")

    def requested(self) -> Tuple[str, ...]:
        """The names of the options that are switched on (``("amp", "cascade")``)."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) not in (None, False))

    @property
    def dtype(self) -> Any:
        """The autocast dtype (``torch.bfloat16``) or None."""
        if self.amp is None:
            return None
        import torch

        return {"bf16": torch.bfloat16}[self.amp]


OPTIONS: Tuple[str, ...] = tuple(f.name for f in fields(Runtime))
PLAIN = Runtime()

_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_forward(model: Any, with_features: bool = False) -> Callable:
    """``torch.compile`` of the model's forward (or features_and_logits), compiled once per model.

    ``dynamic=None`` lets the last, smaller batch reuse the graph after one recompile.
    """
    import torch

    cache = _COMPILED.setdefault(model, {})
    if with_features not in cache:
        fn = model.features_and_logits if with_features else model.forward
        cache[with_features] = torch.compile(fn)
    return cache[with_features]
