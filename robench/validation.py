"""Every check of a run configuration, returning all problems at once.

:func:`check` (what the commands call) raises the first problem of :func:`config_problems`
(or :func:`verify_config_problems`) as one line; the suite parser calls the same functions with
the places of its file, so a check is written once and reads the same on the command line and in
a suite. This module imports robench.config, never the other way round.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from robench.config import (
    EXECUTORS, THREATS, Problem, RunConfig, VerifyRunConfig, checkpoint_problem, eps_problem,
)
from robench.errors import RobenchError, UsageError


def check(cfg: Union[RunConfig, VerifyRunConfig]) -> Union[RunConfig, VerifyRunConfig]:
    """Raise the first problem of ``cfg`` as one :class:`UsageError` line; returns ``cfg``."""
    problems = verify_config_problems(cfg) if isinstance(cfg, VerifyRunConfig) else config_problems(cfg)
    if problems:
        raise UsageError(problems[0].text(cli=True))
    return cfg


def config_problems(cfg: RunConfig, files: bool = True) -> List[Problem]:
    """Every problem of ``cfg`` (empty when it can run).

    Args:
        files: also check that checkpoints exist (a suite checks its own, since
            models it trains do not exist yet).
    """
    out: List[Problem] = []
    out += eps_problems(cfg)
    out += scalar_problems(cfg)
    out += threat_problems(cfg)
    for i, spec in enumerate(cfg.attacks):
        out += [Problem(("attacks", i), m) for _, m in attack_problems(spec)]
    for i, name in enumerate(cfg.detectors):
        if name not in ("auto", "none") and (m := known_problem("detectors", name)):
            out.append(Problem(("detectors", i), m))
    if files:
        out += file_problems(cfg)
    return out


def eps_problems(cfg: RunConfig) -> List[Problem]:
    """The budgets: Linf ones in [0, 1]; the run's --eps list may go above 1 only when every attack
    it applies to is an L2 attack (an attack with its own eps list in a suite is checked with it)."""
    shared = [a for a in cfg.attacks if a not in cfg.attack_eps]
    linf = not shared or any(_norm(a) != "L2" for a in shared)
    out = [Problem(("eps", i), m) for i, e in enumerate(cfg.eps) if (m := eps_problem(e, linf))]
    for spec, values in cfg.attack_eps.items():
        i = cfg.attacks.index(spec) if spec in cfg.attacks else 0
        out += [Problem(("attacks", i, "eps", j), m.replace("{name}", "eps")) for j, e in enumerate(values)
                if (m := eps_problem(e, _norm(spec) != "L2"))]
    return out


def _norm(spec: str) -> str:
    """An attack spec's norm, "" when it cannot be told (unknown name, bad spec: checked elsewhere)."""
    from robench.presets import spec_norm
    from robench.specs import parse_spec

    try:
        name, kwargs = parse_spec(spec)
        return spec_norm(name, kwargs)
    except RobenchError:
        return ""


def scalar_problems(cfg: RunConfig) -> List[Problem]:
    out = []
    if not _is_int(cfg.n) or cfg.n < 1:
        out.append(Problem(("n",), f"{{name}} must be an integer >= 1, got {cfg.n!r}"))
    if cfg.threads is not None and (not _is_int(cfg.threads) or cfg.threads < 1):
        out.append(Problem(("threads",), f"{{name}} must be an integer >= 1, got {cfg.threads!r}"))
    if not _is_int(cfg.seed) or cfg.seed < 0:
        out.append(Problem(("seed",), f"{{name}} must be an integer >= 0, got {cfg.seed!r}"))
    if cfg.batch_size != "auto" and (not _is_int(cfg.batch_size) or cfg.batch_size < 1):
        out.append(Problem(("batch_size",), f"{{name}} must be an integer >= 1 or auto, got {cfg.batch_size!r}"))
    if cfg.amp is not None and cfg.amp != "bf16":
        out.append(Problem(("amp",), f"{{name}} must be bf16 (or not given), got {cfg.amp!r}"))
    if cfg.executor not in EXECUTORS:
        out.append(Problem(("executor",), f"{{name}} must be one of {', '.join(EXECUTORS)}, got {cfg.executor!r}"))
    elif cfg.executor == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            out.append(Problem(("executor",), "executor ray needs Ray: pip install 'robench[ray]'"))
    try:
        from robench.devices import resolve_device

        resolve_device(cfg.device)
    except RobenchError as exc:
        out.append(Problem(("device",), str(exc).replace("--device", "{name}")))
    for key in ("dataset", "arch"):
        value = getattr(cfg, key)
        if value and (m := known_problem("datasets" if key == "dataset" else "archs", value.partition(":")[0])):
            out.append(Problem((key,), m))
    return out


def threat_problems(cfg: RunConfig) -> List[Problem]:
    out, parsed = [], []
    places = [(("threats", i), t) for i, t in enumerate(cfg.threats)]
    places += [(("attacks", cfg.attacks.index(spec) if spec in cfg.attacks else 0, "threats", i), t)
               for spec, ts in cfg.attack_threats.items() for i, t in enumerate(ts)]
    for where, t in places:
        if str(t).strip().lower() in THREATS:
            parsed.append(str(t).strip().lower())
        else:
            out.append(Problem(where, f"unknown threat model '{t}' (known: {', '.join(THREATS)})"))
    if "black-box" in parsed and not cfg.surrogate:
        out.append(Problem(("threats",), "threat black-box needs a 'surrogate' (--surrogate CKPT): the model "
                                         "the attacker crafts on"))
    return out


def file_problems(cfg: RunConfig) -> List[Problem]:
    out = [Problem(("models", i), m) for i, p in enumerate(cfg.models) if (m := checkpoint_problem(p))]
    if cfg.surrogate and (m := checkpoint_problem(cfg.surrogate)):
        out.append(Problem(("surrogate",), m))
    stems = [Path(p).stem for p in cfg.models]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:  # rows and feature files are keyed by the checkpoint's file stem
        out.append(Problem(("models",), f"two models would both be named {', '.join(twice)} (the "
                                        f"checkpoint's file stem); rename one of the files"))
    return out


def known_problem(kind: str, name: str) -> Optional[str]:
    """None when ``name`` is registered as a ``kind``, else the registry's one-line error."""
    from robench.registry import registry

    try:
        registry(kind).entry(name)
    except RobenchError as exc:
        return str(exc)
    return None


# -- attacks --------------------------------------------------------------------------

def attack_problems(spec: str, kwargs: Optional[Dict[str, Any]] = None) -> List[Tuple[Optional[str], str]]:
    """Problems of one attack: (argument name or None, message).

    ``spec`` is ``name[:key=value,...]``; ``kwargs`` given: ``spec`` is just the name.
    """
    from robench.presets import PRESETS
    from robench.specs import parse_spec

    try:
        name, parsed = parse_spec(spec) if kwargs is None else (spec, kwargs)
    except RobenchError as exc:
        return [(None, f"attack '{spec}': {exc}")]
    if name in PRESETS:
        return PRESETS[name].problems(parsed)
    if (m := known_problem("attacks", name.partition(":")[0])):
        return [(None, m)]
    try:
        known = attack_arguments(name)
    except RobenchError as exc:
        return [(None, str(exc))]
    out: List[Tuple[Optional[str], str]] = []
    if "eps" in parsed:
        out.append(("eps", f"attack {name}: give eps with --eps (in a suite: the attack's eps: list), "
                           f"not in the attack spec"))
    out += [(key, message) for key, message in value_problems(name, factory_of(name), parsed)]
    if known is not None:
        import difflib

        for key in sorted(set(parsed) - known - {"eps"}):
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            out.append((key, f"attack {name}: unknown argument '{key}'{hint}"))
    return out


def factory_of(name: str) -> Any:
    from robench.registry import registry

    return registry("attacks").get(name.partition(":")[0])


def value_problems(name: str, factory: Any, kwargs: Dict[str, Any]) -> List[Tuple[str, str]]:
    """Out-of-range values of the arguments the attack declares ranges for (checked before any work)."""
    ranges = dict(getattr(factory, "ranges", None) or {})
    if not ranges:  # attacks that do not declare ranges: the counts every iterative attack has
        from robench.params import Range

        ranges = {k: Range(int, 1) for k in ("steps", "restarts", "binary_search_steps")}
    out = []
    for key in sorted(set(kwargs) & set(ranges)):
        try:
            ranges[key].check(f"attack {name}", key, kwargs[key])
        except UsageError as exc:
            out.append((key, str(exc)))
    return out


def attack_arguments(name: str) -> Optional[Set[str]]:
    """The keyword arguments the attack ``name`` accepts (None: a plugin that checks its own)."""
    factory = factory_of(name)
    family, _, member = name.partition(":")
    if getattr(factory, "is_family", False):
        if not member:
            raise UsageError(f"attack '{family}' is a family: name one of its classes, as in "
                             f"{family}:{getattr(factory, 'example', 'Name')}")
        return set(factory.arguments(member)) | {"seed"}
    if member:
        raise UsageError(f"attack '{family}' is not a family; use '{family}' without ':{member}'")
    if callable(getattr(factory, "arguments", None)):  # robench attacks say what they take
        return set(factory.arguments())
    params = inspect.signature(factory).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"model", "eps",
                                                                                                "runtime"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def verify_config_problems(cfg: VerifyRunConfig) -> List[Problem]:
    """Every problem of a ``robench verify`` configuration."""
    out = [Problem(("eps",), f"{{name}} must be a number in (0, 1] (pixel space), got {e!r}")
           for e in cfg.eps if not (isinstance(e, (int, float)) and math.isfinite(e) and 0 < e <= 1)]
    if not isinstance(cfg.n, int) or cfg.n < 1:
        out.append(Problem(("n",), f"{{name}} must be an integer >= 1, got {cfg.n!r}"))
    if not (isinstance(cfg.time_limit, (int, float)) and math.isfinite(cfg.time_limit) and cfg.time_limit > 0):
        out.append(Problem(("time_limit",), f"{{name}} must be a number > 0, got {cfg.time_limit!r}"))
    if cfg.batch_size < 1:
        out.append(Problem(("batch_size",), f"{{name}} must be an integer >= 1, got {cfg.batch_size!r}"))
    if cfg.solver_workers is not None and not (_is_int(cfg.solver_workers) and cfg.solver_workers >= 1):
        out.append(Problem(("solver_workers",), f"{{name}} must be an integer >= 1, got {cfg.solver_workers!r}"))
    out += [Problem(("models", i), m) for i, p in enumerate(cfg.models) if (m := checkpoint_problem(p))]
    return out
