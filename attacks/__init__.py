"""Attacks: the native engine and the torchattacks / ART adapters.

The front door is :func:`create_attack`; every attack is called as
``attack(x, y) -> x_adv`` with inputs in [0, 1] and is verified on the way out.

Native attacks (one file each; every argument but eps has a default)::

    fgsm    Linf  objective="ce"
    bim     Linf  steps=10, step_size=2.5*eps/steps, objective="ce"
    pgd     Linf  steps=20, step_size=2.5*eps/steps, random_start=True, restarts=1, objective="ce", seed=0
    pgd-l2  L2    steps=20, step_size=2.5*eps/steps, random_start=True, restarts=1, objective="ce", seed=0
    mim     Linf  steps=10, step_size=eps/steps, decay=1.0, objective="ce"
    cw-l2   L2    binary_search_steps=9, steps=100, lr=0.1, confidence=0, initial_const=0.1,
                  abort_early=True; eps<=0 or None: unbounded

Objectives (``objective=``): ``ce``, ``margin``, ``lkd``, ``joint`` (with
``detector=``, ``fpr=0.05``, ``detector_weight=1.0``); see
:mod:`robench.attacks.objectives`. Families: ``ta:<Class>`` (any torchattacks
attack) and ``art:<Class>`` (any ART evasion attack); :func:`expand_families`
lists them.

Nothing heavy is imported here: torch comes with the first attack built, and
torchattacks / ART only when a ``ta:`` / ``art:`` attack is built or the
families are expanded.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable, List

from robench.errors import UsageError

__all__ = ["create_attack", "expand_families"]


def create_attack(name: str, model: Any, eps: Any, **kwargs: Any) -> Any:
    """Build a registered attack.

    Args:
        name: a registry name (``pgd``, ``cw-l2``) or a family member (``ta:APGD``,
            ``art:DeepFool``).
        model: the :class:`~robench.models.RobustModel` to attack.
        eps: the budget in pixel space (Linf in [0, 1]; see each attack).
        **kwargs: the attack's own arguments (``steps=40``, ``objective="margin"``, ...).

    Returns:
        An attack: ``attack(x, y) -> x_adv``.

    Raises:
        UsageError: unknown name (with the nearest names), unknown argument, bad value.
    """
    from robench.registry import registry

    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"attack name must be a non-empty string, got {name!r}")
    name = name.strip()
    factory = registry("attacks").get(name)
    family, sep, member = name.partition(":")
    is_family = bool(getattr(factory, "is_family", False))
    if sep and not is_family:
        raise UsageError(f"attack '{family}' is not a family; use '{family}' without ':{member}'")
    if is_family and not member.strip():
        raise UsageError(f"attack '{family}' is a family: name one of its classes, as in "
                         f"{family}:{getattr(factory, 'example', 'Name')}")
    _check_names(factory, name, kwargs)
    if is_family:
        return factory(model, eps=eps, member=member.strip(), **kwargs)
    return factory(model, eps=eps, **kwargs)


def _check_names(factory: Any, name: str, kwargs: dict) -> None:
    """Unknown keyword -> UsageError; factories taking ``**kwargs`` check their own."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][1:]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise UsageError(f"{name}: unknown argument(s) {', '.join(unknown)} (known: {', '.join(known)})")


def expand_families(names: Iterable[str]) -> List[str]:
    """Replace each family name (``ta``, ``art``) by ``family:<Class>`` for all its classes.

    Other names pass through unchanged. Imports torchattacks / ART.
    """
    from robench.registry import registry

    reg = registry("attacks")
    out: List[str] = []
    for name in names:
        if ":" not in name and name in reg:
            factory = reg.get(name)
            if getattr(factory, "is_family", False):
                out.extend(f"{name}:{member}" for member in factory.members())
                continue
        out.append(name)
    return out
