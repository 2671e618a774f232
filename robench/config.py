"""The run configuration: one frozen dataclass, whose field metadata is the only schema.

Every field of :class:`RunConfig` carries an :class:`Option`: its kind, default,
help text and checks. From those alone come

* the Click options of ``robench attack`` (and the overrides of ``robench run``):
  :func:`click_options`;
* the suite file's top-level keys and their types: :func:`suite_keys`;
* what a run directory is bound to (its identity in the manifest): :func:`run_identity`;
* the checks, from the fields' validators and choices: :func:`robench.validation.config_problems`
  returns every problem at once (the CLI prints the first as one line, a suite prints all with
  their line numbers).

Adding a run option is adding one field here (and using it where it acts).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from robench.errors import RobenchError


@dataclass(frozen=True)
class Option:
    """How one configuration field appears on the command line and in suites.

    Args:
        help: the ``--help`` text (also the suite key's documentation).
        kind: ``str``, ``int``, ``float``, ``bool`` or ``batch`` (an integer or ``auto``).
        multiple: a list (repeatable option; a list or a single value in suites).
        flag: the CLI spelling, e.g. ``--model`` (default: ``--`` + the name with dashes).
        cli: an option of ``robench attack``.
        override: also an option of ``robench run`` (overriding the suite's value).
        suite: ``"key"`` (a plain top-level suite key), ``"special"`` (a key the suite
            parser reads itself: models, surrogate, attacks) or ``""`` (not in suites).
        identity: part of what a run directory is bound to (False for where cells
            run: executor, Ray address, threads).
        choices: allowed values (shown in ``--help``; checked by ``validation.config_problems``).
        required: the CLI requires it.
        metavar: the CLI's placeholder.
    """

    help: str
    kind: str = "str"
    multiple: bool = False
    flag: Optional[str] = None
    cli: bool = True
    override: bool = False
    suite: str = "key"
    identity: bool = True
    choices: Tuple[str, ...] = ()
    required: bool = False
    metavar: Optional[str] = None


def opt(default: Any = None, **option: Any) -> Any:
    """A dataclass field with an :class:`Option` in its metadata (lists default to empty)."""
    meta = {"option": Option(**option)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


THREATS = ("gray-box", "white-box", "black-box")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of one ``robench attack`` / ``run`` (written to the manifest)."""

    models: List[str] = opt([], help="Checkpoint (repeatable).", multiple=True, flag="--model",
                            required=True, suite="special")
    attacks: List[str] = opt([], help="Attack, optionally NAME:key=value,... (repeatable).", multiple=True,
                             flag="--attack", required=True, suite="special")
    eps: List[float] = opt([], help="Budget in pixel space (repeatable): in [0,1] for Linf attacks; an L2 "
                                    "attack's may be larger (up to sqrt of the input size).", kind="float",
                           multiple=True, required=True)
    threats: List[str] = opt(["gray-box"], help="gray-box, white-box or black-box (repeatable).",
                             multiple=True, flag="--threat")
    surrogate: Optional[str] = opt(None, help="Checkpoint the black-box attacker crafts on.", suite="special")
    detectors: List[str] = opt(["auto"], help="Detector name, auto or none (repeatable).", multiple=True,
                               flag="--detector")
    dataset: Optional[str] = opt(None, help="Dataset spec (default: the checkpoint's).")
    arch: Optional[str] = opt(None, help="Architecture, for official checkpoints it cannot infer.",
                              suite="")
    n: int = opt(500, help="Test points attacked.", kind="int", override=True)
    batch_size: Any = opt(250, help="Points per attack batch, or auto: the largest that fits (GPU memory, or "
                                    "a CPU memory cap: ROBENCH_CPU_MEMORY_GB, default a quarter of the free "
                                    "memory).", kind="batch", override=True, metavar="N|auto")
    seed: int = opt(0, help="Random seed.", kind="int", override=True)
    device: str = opt("auto", help="auto, cpu or cuda.", override=True)
    executor: str = opt("local", help="Where cells run: this process, or Ray tasks.", choices=EXECUTORS,
                        override=True, identity=False)
    ray_address: Optional[str] = opt(None, help="Address of an existing Ray cluster (default: start one).",
                                     override=True, identity=False)
    threads: Optional[int] = opt(None, help="Torch threads for every cell, wherever it runs (default: this "
                                            "process's).", kind="int", override=True, identity=False)
    cascade: bool = opt(False, help="Worst-case robust accuracy at a fraction of the passes: each further "
                                    "attack (and restart) runs only on the points still robust. Fewer "
                                    "adversarial examples for detection.", kind="bool", override=True)
    amp: Optional[str] = opt(None, help="Attack forward passes under bfloat16 autocast (evaluation stays fp32; "
                                        "the sanity report checks robust accuracy against fp32).",
                             choices=("bf16",))
    compile: bool = opt(False, help="Attack forward passes through torch.compile.", kind="bool")
    sanity: bool = opt(True, help="Run the gradient-masking sanity checks after the grid.", kind="bool")
    save_adv: Optional[bool] = opt(None, help="Store the adversarial examples (default: when the run's would "
                                              "take at most ROBENCH_SAVE_ADV_GB, default 2 GB; identical sets "
                                              "are stored once).", kind="bool", override=True, identity=False)
    # Per-attack overrides come from suites (an attack entry's own eps: / threats:).
    attack_eps: Dict[str, List[float]] = opt({}, help="Per-attack eps.", cli=False, suite="")
    attack_threats: Dict[str, List[str]] = opt({}, help="Per-attack threat models.", cli=False, suite="")

    def __post_init__(self) -> None:
        for f in fields(self):  # tuples from Click become lists: the manifest writes the same JSON
            if isinstance(getattr(self, f.name), tuple):
                object.__setattr__(self, f.name, list(getattr(self, f.name)))

    def eps_for(self, spec: str) -> List[float]:
        return self.attack_eps.get(spec, self.eps)

    def threats_for(self, spec: str) -> List[str]:
        return self.attack_threats.get(spec, self.threats)

    def replace(self, **changes: Any) -> "RunConfig":
        return replace(self, **changes)

@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration.

    Args:
        where: the place: a field name, then list indices or keys (``("attacks", 1)``).
        message: the text, with ``{name}`` where the option's name goes
            (``--n`` on the command line, ``n`` in a suite).
    """

    where: Tuple[Any, ...]
    message: str

    def text(self, cli: bool = False) -> str:
        name = self.where[0] if self.where else ""
        if cli and isinstance(name, str):
            spec = OPTIONS.get(name)
            label = spec.flag or "--" + name.replace("_", "-") if spec else "--" + name.replace("_", "-")
        else:
            label = str(name)
        return self.message.replace("{name}", label)


OPTIONS: Dict[str, Option] = {f.name: f.metadata["option"] for f in fields(RunConfig)}  # RunConfig's

VERIFY_METHODS = ("exact", "crown", "crown-ibp", "ibp")


@dataclass(frozen=True)
class VerifyRunConfig:
    """The configuration of one ``robench verify`` (written to the manifest)."""

    models: List[str] = opt([], help="Checkpoint (repeatable).", multiple=True, flag="--model", required=True)
    eps: List[float] = opt([], help="Linf budget in [0,1] pixel space (repeatable).", kind="float",
                           multiple=True, required=True)
    norm: str = opt("linf", help="The budget's norm (Linf only).", choices=("linf",))
    method: str = opt("exact", help="exact: mixed-integer programming (small ReLU nets; the true answer); "
                                    "crown / crown-ibp / ibp: certified lower bounds (any size).",
                      choices=VERIFY_METHODS)
    detectors: List[str] = opt(["auto"], help="auto: also the detection-aware question for GM models "
                                              "(gm-likelihood at 5% FPR); none: robustness only (repeatable).",
                               multiple=True, flag="--detector", choices=("auto", "none", "gm-likelihood"))
    dataset: Optional[str] = opt(None, help="Dataset spec (default: the checkpoint's).")
    arch: Optional[str] = opt(None, help="Architecture, for official checkpoints it cannot infer.")
    n: int = opt(100, help="Test points verified.", kind="int")
    time_limit: float = opt(60.0, help="Seconds of solving per point (exact); undecided points are 'unknown'.",
                            kind="float")
    solver: str = opt("auto", help="auto: on MLPs and plain CNNs, branch and bound over ReLU splits "
                                   "first for each target, then HiGHS (the detector's quadratic "
                                   "constraint by outer approximation); highs: HiGHS alone; scip: SCIP, "
                                   "the constraint as it is.",
                      choices=("auto", "highs", "scip"))
    solver_workers: Optional[int] = opt(None, help="Target programs of a point solved at once, in threads "
                                                   "(exact; default: the cores this process may use).",
                                        kind="int", identity=False)
    seed: int = opt(0, help="Seed of the bootstrap intervals.", kind="int")
    batch_size: int = opt(250, help="Points per batch for detector fitting and features.", kind="int")

    def __post_init__(self) -> None:
        for name in ("models", "eps", "detectors"):
            if isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, list(getattr(self, name)))


def run_identity(cfg: RunConfig, command: str = "attack") -> Dict[str, Any]:
    """What a run directory is bound to: the configuration, less where its cells run."""
    from robench.io import to_jsonable

    config = {"command": command, **{k: v for k, v in asdict(cfg).items() if OPTIONS[k].identity}}
    return json.loads(json.dumps(to_jsonable(config), sort_keys=True))


# -- the suite's view ---------------------------------------------------------------

_SUITE_TYPES = {"str": str, "int": int, "float": (float, int), "bool": bool, "batch": (int, str)}


def suite_keys() -> Dict[str, Any]:
    """Top-level suite keys from the schema: key -> accepted Python types."""
    out: Dict[str, Any] = {}
    for name, spec in OPTIONS.items():
        if spec.suite == "key":
            base = _SUITE_TYPES[spec.kind]
            base = base if isinstance(base, tuple) else (base,)
            out[name] = (list, *base) if spec.multiple else (base[0] if len(base) == 1 else base)
        elif spec.suite == "special":
            out[name] = (list,) if spec.multiple else (dict, str)
    return out


def parse_value(name: str, value: Any) -> Any:
    """A suite or override value as the field holds it (single values become lists)."""
    spec = OPTIONS[name]
    if spec.multiple:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        return [str(v) for v in values] if spec.kind == "str" else values
    return value


# -- the command line's view ------------------------------------------------------------

def options_of(schema: type) -> Dict[str, Option]:
    """name -> Option of every field of a configuration dataclass."""
    return {f.name: f.metadata["option"] for f in fields(schema)}


def click_options(command: str, schema: type = RunConfig) -> Callable:
    """Decorator adding a schema's options to a Click command: its own (``attack``, ``verify``)
    or, for ``run``, the overrides of a suite's values."""
    import click

    def decorate(f: Callable) -> Callable:
        for name, spec in reversed(list(options_of(schema).items())):
            if command != "run" and spec.cli:
                f = _click_option(click, schema, name, spec, override=False)(f)
            elif command == "run" and spec.override:
                f = _click_option(click, schema, name, spec, override=True)(f)
        return f

    return decorate


def _click_option(click, schema: type, name: str, spec: Option, override: bool) -> Callable:
    flag = spec.flag or "--" + name.replace("_", "-")
    default = None if override else schema.__dataclass_fields__[name]
    if default is not None:
        default = default.default_factory() if callable(default.default_factory) else default.default
    kwargs: Dict[str, Any] = {"help": ("Override the suite's value. " if override else "") + spec.help}
    if spec.kind == "bool":
        no = "--no-" + flag[2:]
        return click.option(f"{flag}/{no}", name, default=default, show_default=not override, **kwargs)
    kwargs.update(default=default, show_default=not override and default not in (None, []))
    if spec.kind == "batch":
        kwargs.update(type=str, metavar=spec.metavar, callback=_batch_callback)
    elif spec.choices:
        kwargs["type"] = click.Choice(list(spec.choices))
    else:
        kwargs["type"] = {"int": int, "float": float}.get(spec.kind, str)
    if spec.multiple:
        kwargs.update(multiple=True, required=spec.required and not override)
        if not spec.required:
            kwargs["default"] = tuple(default or ())
    return click.option(flag, name, **kwargs)


def _batch_callback(ctx: Any, param: Any, value: Any) -> Any:
    import click

    from robench.batching import parse_batch_size

    if value is None:
        return None
    try:
        return parse_batch_size(value)
    except RobenchError as exc:
        raise click.BadParameter(str(exc).replace("--batch-size must be", "must be")) from None


def config_from_cli(values: Dict[str, Any], schema: type = RunConfig) -> Any:
    """A command's configuration (``robench attack``'s by default) from Click's keyword arguments."""
    known = options_of(schema)
    return schema(**{k: v for k, v in values.items() if k in known})


def overrides_from_cli(values: Dict[str, Any]) -> Dict[str, Any]:
    """``robench run``'s overrides: the schema's options that were given."""
    return {k: v for k, v in values.items() if k in OPTIONS and v is not None}


# -- single-field checks (used by robench.validation) -----------------------------------

def eps_problem(value: Any, linf: bool = True) -> Optional[str]:
    """A budget's problem: in [0, 1] for Linf (pixel space); any finite value >= 0 for an L2 budget
    (its attack checks the upper bound, sqrt of the input size, once it knows the model)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (linf and value > 1):
        if linf:
            return f"{{name}} must be a number in [0, 1] (pixel space), got {value!r}"
        return f"{{name}} must be a finite number >= 0 (an L2 budget in pixel space), got {value!r}"
    return None


def checkpoint_problem(path: str) -> Optional[str]:
    try:
        return None if Path(path).is_file() else f"checkpoint {path}: no such file"
    except (OSError, ValueError):
        return f"checkpoint {path!r}: not a usable path"
