"""Attacks: the native engine and the torchattacks / ART adapters.

The front door is :func:`create_attack`; every attack is called as
``attack(x, y) -> x_adv`` with inputs in [0, 1] and is verified on the way out.

Native attacks (one file each; every argument but eps has a default)::

    fgsm     Linf  objective="ce"
    bim      Linf  steps=10, step_size=2.5*eps/steps, objective="ce"
    pgd      Linf  steps=20, step_size=2.5*eps/steps, random_start=True, restarts=1, objective="ce", seed=0
    pgd-l2   L2    steps=20, step_size=2.5*eps/steps, random_start=True, restarts=1, objective="ce", seed=0
    mim      Linf  steps=10, step_size=eps/steps, decay=1.0, objective="ce"
    apgd     Linf  steps=100, restarts=1, rho=0.75, objective="ce", seed=0   (APGD-CE; "dlr": APGD-DLR;
                   objective="dlr", targets=9: APGD-T)
    apgd-l2  L2    as apgd
    cw-l2    L2    binary_search_steps=9, steps=100, lr=0.1, confidence=0, initial_const=0.1,
                   abort_early=True; eps<=0 or None: unbounded

Every attack above but cw-l2 is a gradient attack and also takes::

    objective        "ce", "margin", "dlr", "lkd" or "joint" (see robench.attacks.objectives)
    detector, fpr=0.05, detector_weight=1.0    the joint objective's detector and threshold
    targets=None     K in [1, classes-1]: multi-targeted, one run per target among the K
                     highest other classes by clean logit, keeping per sample the worst case
    eot=1            gradients averaged over that many draws (randomised models or detectors)
    update="joint"   "selective" / "orthogonal" (with objective="joint"): step on the
                     classifier term until misclassified, then on the detector term

Runtime options (``runtime=Runtime(amp="bf16", compile=True, cascade=True)``) are
given at construction; :func:`supports` says which an attack honours.

Ranges: every numeric argument is declared in the class's ``ranges`` and
checked through :class:`robench.params.Range`. Not numeric, so not in ``ranges``:
``eps`` (its range depends on the norm and the model, see
:func:`robench.attacks.params.eps_range`), ``detector`` and ``runtime`` (objects),
``objective`` / ``update`` (choices) and the booleans (``random_start``, ``abort_early``).

Families: ``ta:<Class>`` (any torchattacks attack) and ``art:<Class>`` (any ART
evasion attack); :func:`expand_families` lists them.

Nothing heavy is imported here: torch comes with the first attack built, and
torchattacks / ART only when a ``ta:`` / ``art:`` attack is built or the
families are expanded.
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable, List, Optional

from robench.attacks.runtime import OPTIONS as RUNTIME_OPTIONS
from robench.attacks.runtime import Runtime
from robench.errors import UsageError
from robench.params import check_choice, check_known

__all__ = ["Runtime", "create_attack", "expand_families", "supports"]


def create_attack(name: str, model: Any, eps: Any, runtime: Optional[Runtime] = None, **kwargs: Any) -> Any:
    """Build a registered attack.

    Args:
        name: a registry name (``pgd``, ``cw-l2``) or a family member (``ta:APGD``,
            ``art:DeepFool``).
        model: the :class:`~robench.models.RobustModel` to attack.
        eps: the budget in pixel space (Linf in [0, 1]; see each attack).
        runtime: how the forward passes run (bf16 autocast, torch.compile, cascaded
            restarts); None: plain. An option the attack does not support is a UsageError.
        **kwargs: the attack's own arguments (``steps=40``, ``objective="margin"``, ...).

    Returns:
        An attack: ``attack(x, y) -> x_adv``.

    Raises:
        UsageError: unknown name (with the nearest names), unknown argument, bad value,
            unsupported runtime option.
    """
    factory, member = _factory(name)
    if member is not None:
        return factory(model, eps=eps, member=member, runtime=runtime, **kwargs)
    name = name.strip()
    _check_names(factory, name, kwargs)
    if hasattr(factory, "supports"):
        return factory(model, eps=eps, runtime=runtime, **kwargs)
    # A plugin that is not built on robench's Attack declares no runtime options.
    if runtime is not None and runtime.requested():
        raise UsageError(f"{name}: --{runtime.requested()[0]} is not supported: "
                         f"the attack declares no runtime options")
    return factory(model, eps=eps, **kwargs)


def supports(name: str, option: str) -> bool:
    """Whether the attack registered as ``name`` honours the runtime ``option`` ("amp", "compile", "cascade")."""
    check_choice("supports", "runtime option", option, RUNTIME_OPTIONS)
    factory, _ = _factory(name)
    return option in getattr(factory, "supports", frozenset())


def _factory(name: str):
    """(registered factory, family member or None) for ``name``; UsageError on a malformed name."""
    from robench.registry import registry

    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"attack name must be a non-empty string, got {name!r}")
    name = name.strip()
    factory = registry("attacks").get(name)
    family, sep, member = name.partition(":")
    if not getattr(factory, "is_family", False):
        if sep:
            raise UsageError(f"attack '{family}' is not a family; use '{family}' without ':{member}'")
        return factory, None
    if not member.strip():
        raise UsageError(f"attack '{family}' is a family: name one of its classes, as in "
                         f"{family}:{getattr(factory, 'example', 'Name')}")
    return factory, member.strip()


def _check_names(factory: Any, name: str, kwargs: dict) -> None:
    """Unknown keyword -> UsageError; factories taking ``**kwargs`` check their own."""
    arguments = getattr(factory, "arguments", None)
    if callable(arguments):
        check_known(name, kwargs, arguments())
        return
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)][1:]
    check_known(name, kwargs, [k for k in known if k not in ("eps", "runtime")])


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
