"""``robench run SUITE.yaml``: one file describes the whole grid.

Example::

    dataset: mnist5k
    models:
      - {name: gm, train: {defense: gm, epochs: 6}}
      - checkpoints/softmax.pt                 # named by its file stem ("softmax")
    surrogate: {name: surrogate, train: {defense: softmax, train_half: b, epochs: 4}}
    attacks:
      - fgsm
      - {name: pgd, steps: 10}
      - {name: cw-l2, binary_search_steps: 4, eps: [0], threats: [gray-box]}   # its own eps, threats
    eps: [0.1, 0.2, 0.3]
    threats: [gray-box, white-box]
    detectors: [auto]
    n: 200
    batch_size: 200            # or auto: the largest batch that fits (GPU memory, or a CPU memory cap)
    seed: 0
    device: auto
    executor: local            # or ray (with ray_address: ADDR for a cluster)
    threads: 4                 # torch threads per cell (default: this process's count)
    cascade: false             # true: each further attack only on the points still robust
    # amp: bf16                # attack forward passes under bfloat16 autocast (sanity checks it)
    compile: false             # true: attack forward passes through torch.compile

Validation happens before any work: every problem (unknown keys at any depth,
wrong types, unknown names, missing files, impossible combinations) is
reported at once with its line in the file. Command-line options override
file values. Models given as train specs are trained first and cached as
``OUT/checkpoints/<hash of the train spec>/<name>.pt``; ``seed`` is the
attacks' seed, a model's training seed is ``train.seed`` (default 0).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from robench.errors import RobenchError, UsageError

TOP_KEYS = {
    "dataset": str, "models": list, "surrogate": (dict, str), "attacks": list, "eps": (list, float, int),
    "threats": (list, str), "detectors": (list, str), "n": int, "batch_size": (int, str), "seed": int,
    "device": str, "executor": str, "ray_address": str, "threads": int, "out": str, "sanity": bool,
    "cascade": bool, "amp": str, "compile": bool,
}
MODEL_KEYS = {"name": str, "path": str, "arch": str, "train": dict}
TRAIN_KEYS = {"defense": str, "arch": str, "epochs": int, "seed": int, "batch_size": int, "lr": (float, int),
              "feature_dim": int, "train_half": str, "params": dict}
SCALARS = ("n", "batch_size", "seed", "device", "executor", "ray_address", "threads", "out", "sanity", "cascade", "amp",
           "compile")
EXECUTORS = ("local", "ray")
PATH_DATASETS = ("mnist", "cifar10", "npz")  # name:PATH specs whose PATH must exist

Path_ = Tuple[Any, ...]  # a place in the file: ("models", 0, "train", "epochs")


class SuiteError(UsageError):
    """All problems of a suite file, each with its line."""


@dataclass
class ModelSpec:
    name: str
    path: Optional[str] = None
    arch: Optional[str] = None
    train: Optional[Dict[str, Any]] = None


@dataclass
class Suite:
    dataset: Optional[str]
    models: List[ModelSpec]
    attacks: List[Tuple[str, Optional[List[float]]]]  # (spec, eps override)
    eps: List[float]
    threats: List[str] = field(default_factory=lambda: ["gray-box"])
    surrogate: Optional[ModelSpec] = None
    detectors: List[str] = field(default_factory=lambda: ["auto"])
    n: int = 500
    batch_size: Any = 250  # or "auto"
    seed: int = 0
    device: str = "auto"
    executor: str = "local"
    ray_address: Optional[str] = None
    threads: Optional[int] = None
    out: Optional[str] = None
    sanity: bool = True
    attack_threats: Dict[str, List[str]] = field(default_factory=dict)  # per-attack threat overrides
    cascade: bool = False
    amp: Optional[str] = None
    compile: bool = False


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


def load_suite(path: str, overrides: Optional[Dict[str, Any]] = None) -> Suite:
    """Parse and validate a suite file; CLI ``overrides`` (None: not given) replace file values."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"suite {path}: no such file")
    try:
        node = yaml.compose(p.read_text(encoding="utf-8"))
        data = yaml.safe_load(yaml.serialize(node)) if node is not None else None
    except UnicodeDecodeError:
        raise SuiteError(f"suite {path}: not a text file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        detail = " ".join(str(getattr(exc, "problem", None) or exc).split())  # reader errors span lines
        raise SuiteError(f"suite {path}: {where}YAML syntax error: {detail}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"suite {path}: the top level must be a mapping of keys (dataset, models, attacks, ...)")
    return parse_suite(data, node_lines(node), str(path), overrides or {})


def parse_suite(data: Dict[str, Any], lines: Dict[Path_, int], source: str, overrides: Dict[str, Any]) -> Suite:
    """Check ``data`` (the loaded file) against the schema and the registries; build a :class:`Suite`."""
    given = {k: v for k, v in overrides.items() if v is not None}
    problems = Problems(lines, set(given))
    check_keys(data, TOP_KEYS, (), problems)
    data = {**data, **given}
    check_keys(given, TOP_KEYS, (), problems)
    for key in ("models", "attacks", "eps"):
        if key not in data:
            problems.add((), f"missing required key '{key}'")
    value = {k: _typed(data, k, t) for k, t in TOP_KEYS.items()}  # None: absent or reported above
    scalars = {k: value[k] for k in SCALARS if value[k] is not None}
    suite = Suite(dataset=value["dataset"], models=[], attacks=[], eps=[],
                  threats=[str(t) for t in _as_list(value["threats"] or "gray-box")],
                  detectors=[str(d) for d in _as_list(value["detectors"] or "auto")], **scalars)
    suite.models = [model_spec(m, ("models", i), problems) for i, m in enumerate(_list(data, "models"))]
    if data.get("surrogate"):
        suite.surrogate = model_spec(data["surrogate"], ("surrogate",), problems)
    suite.attacks = [attack_spec(a, ("attacks", i), problems, suite.attack_threats)
                     for i, a in enumerate(_list(data, "attacks"))]
    suite.eps = [check_eps(e, ("eps", i), problems) for i, e in enumerate(_as_list(data.get("eps")))]
    check_grid(suite, problems)
    problems.raise_if_any(source)
    return suite


def _as_list(value: Any) -> List[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _list(data: Dict[str, Any], key: str) -> List[Any]:
    return data[key] if isinstance(data.get(key), list) else []


def _typed(data: Dict[str, Any], key: str, types: Any) -> Any:
    value = data.get(key)
    return value if _is_type(value, types) else None


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def check_keys(data: Dict[str, Any], schema: Dict[str, Any], where: Path_, problems: Problems) -> None:
    """Unknown keys (with the nearest known one) and wrong types, each at its own line."""
    label = ".".join(str(w) if isinstance(w, str) else f"[{w}]" for w in where).replace(".[", "[")
    prefix = f"{label}." if label else ""
    for key, value in data.items():
        if key not in schema:
            near = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            problems.add(where + (key,), f"unknown key '{prefix}{key}'{hint}")
        elif value is not None and not _is_type(value, schema[key]):
            problems.add(where + (key,), f"'{prefix}{key}' must be {_type_name(schema[key])}, "
                                         f"got {type(value).__name__}")


def _is_type(value: Any, types: Any) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _type_name(types: Any) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {str: "a string", list: "a list", dict: "a mapping", int: "an integer", float: "a number", bool: "true/false"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _exists(path: str, file: bool = False) -> bool:
    try:
        return Path(path).is_file() if file else Path(path).exists()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def _known(kind: str, name: str, where: Path_, problems: Problems) -> bool:
    from robench.registry import registry

    try:
        registry(kind).entry(name)
    except RobenchError as exc:
        problems.add(where, str(exc))
        return False
    return True


# -- models ----------------------------------------------------------------------------

def model_spec(entry: Any, where: Path_, problems: Problems) -> ModelSpec:
    """A model entry: a checkpoint path, ``{path: ...}`` or ``{name: ..., train: {...}}``."""
    label = "surrogate" if where == ("surrogate",) else f"models[{where[-1]}]"
    if isinstance(entry, str):
        entry = {"path": entry}
    if not isinstance(entry, dict):
        problems.add(where, f"{label} must be a checkpoint path or a mapping with 'path' or 'train'")
        return ModelSpec(name=label)
    check_keys(entry, MODEL_KEYS, where, problems)
    path, train = entry.get("path"), entry.get("train")
    if bool(path) == bool(train):
        problems.add(where, f"{label} needs exactly one of 'path' and 'train'")
    if isinstance(path, str) and path and not _exists(path, file=True):
        problems.add(where + ("path",), f"{label}.path: checkpoint {path}: no such file")
    if isinstance(entry.get("arch"), str):
        if train:
            problems.add(where + ("arch",), f"{label}.arch is for a checkpoint given by path; "
                                            f"a trained model takes train.arch")
        else:
            _known("archs", entry["arch"], where + ("arch",), problems)
    if isinstance(train, dict):
        check_train(train, where + ("train",), label, problems)
    name = entry.get("name") if isinstance(entry.get("name"), str) else None
    if name and isinstance(path, str) and path and name != Path(path).stem:
        # Rows and feature files carry the checkpoint's file stem; a second name would be ignored.
        problems.add(where + ("name",), f"{label}.name: a checkpoint given by path is named by its file "
                                        f"stem ('{Path(path).stem}'); rename the file or drop 'name'")
    name = name or (Path(path).stem if isinstance(path, str) and path else label)
    arch = entry.get("arch") if isinstance(entry.get("arch"), str) else None
    return ModelSpec(name=name, path=path if isinstance(path, str) else None, arch=arch,
                     train=train if isinstance(train, dict) else None)


def check_train(train: Dict[str, Any], where: Path_, label: str, problems: Problems) -> None:
    check_keys(train, TRAIN_KEYS, where, problems)
    if not isinstance(train.get("defense"), str):
        problems.add(where, f"{label}.train needs 'defense' (a defense name)")
    else:
        _known("defenses", train["defense"], where + ("defense",), problems)
    if isinstance(train.get("arch"), str):
        _known("archs", train["arch"], where + ("arch",), problems)
    if train.get("train_half") not in (None, "a", "b"):
        problems.add(where + ("train_half",), f"{label}.train.train_half must be 'a' or 'b'")
    for key in ("epochs", "batch_size", "feature_dim", "lr"):
        value = train.get(key)
        if _is_type(value, TRAIN_KEYS[key]) and not (value > 0 and math.isfinite(value)):
            problems.add(where + (key,), f"{label}.train.{key} must be positive, got {value}")


# -- attacks and eps --------------------------------------------------------------------

def attack_spec(entry: Any, where: Path_, problems: Problems,
                threats: Optional[Dict[str, List[str]]] = None) -> Tuple[str, Optional[List[float]]]:
    """An attack entry: ``name[:key=value,...]`` or ``{name: ..., eps: [...], threats: [...], <arguments>}``.

    Returns (spec, eps override); a ``threats`` override goes into ``threats[spec]``.
    """
    from robench.specs import format_spec, parse_spec

    if isinstance(entry, str):
        try:
            name, kwargs = parse_spec(entry)
        except RobenchError as exc:
            problems.add(where, f"attack '{entry}': {exc}")
            return entry, None
        check_attack(name, kwargs, where, {}, problems)
        return entry, None
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        problems.add(where, "each attack must be a name or a mapping with 'name'")
        return "?", None
    kwargs = {k: v for k, v in entry.items() if k not in ("name", "eps", "threats")}
    if not all(isinstance(k, str) for k in kwargs):
        problems.add(where, f"attack {entry['name']}: argument names must be strings")
        return "?", None
    check_attack(entry["name"], kwargs, where, {k: where + (k,) for k in kwargs}, problems)
    for key, value in kwargs.items():
        if not (value is None or isinstance(value, (str, int, float, bool))):
            problems.add(where + (key,), f"attack {entry['name']}: '{key}' must be a single value, "
                                         f"got {type(value).__name__}")
    eps = None
    if "eps" in entry:
        eps = [check_eps(e, where + ("eps", i), problems) for i, e in enumerate(_as_list(entry["eps"]))]
    spec = format_spec(entry["name"], kwargs)
    if "threats" in entry and threats is not None:
        from robench.threats import ThreatModel

        own = [str(t) for t in _as_list(entry["threats"])]
        for i, t in enumerate(own):
            try:
                ThreatModel.parse(t)
            except RobenchError as exc:
                problems.add(where + ("threats", i), str(exc))
        if not own:
            problems.add(where + ("threats",), f"attack {entry['name']}: threats must not be empty")
        threats[spec] = own
    return spec, eps


def check_attack(name: str, kwargs: Dict[str, Any], where: Path_, arg_where: Dict[str, Path_],
                 problems: Problems) -> None:
    """Registered name, known arguments (each at its own line), sane step counts."""
    from robench.runner import _check_attack_kwargs

    if not _known("attacks", name, where + ("name",), problems):
        return
    try:
        known = attack_arguments(name)
    except RobenchError as exc:
        problems.add(where + ("name",), str(exc))
        return
    for key in sorted(kwargs):
        if known is not None and key not in known:
            near = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            problems.add(arg_where.get(key, where), f"attack {name}: unknown argument '{key}'{hint}")
    try:
        _check_attack_kwargs(name, kwargs)
    except RobenchError as exc:
        problems.add(where, str(exc))


def attack_arguments(name: str) -> Optional[set]:
    """The keyword arguments the attack ``name`` accepts (None: it checks its own)."""
    import inspect

    from robench.registry import registry

    factory = registry("attacks").get(name)
    family, _, member = name.partition(":")
    if getattr(factory, "is_family", False):
        if not member:
            raise UsageError(f"attack '{family}' is a family: name one of its classes, as in "
                             f"{family}:{getattr(factory, 'example', 'Name')}")
        return set(factory._signature(factory.resolve(member))) | {"seed"}
    params = inspect.signature(factory).parameters.values()
    known = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"model", "eps"}
    if any(p.kind == p.VAR_KEYWORD for p in params):
        from robench.attacks.base import GradientAttack
        from robench.attacks.objectives import JOINT_OPTIONS

        if not (isinstance(factory, type) and issubclass(factory, GradientAttack)):
            return None
        known |= set(JOINT_OPTIONS)
    return known - {"objective_options"}


def check_eps(value: Any, where: Path_, problems: Problems) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        problems.add(where, f"eps must be numbers in [0, 1] (pixel space), got {value!r}")
        return 0.0
    return float(value)


# -- the grid as a whole ----------------------------------------------------------------

def check_grid(suite: Suite, problems: Problems) -> None:
    """Names in the registries, files on disk, and combinations that cannot run."""
    from robench.devices import resolve_device
    from robench.threats import ThreatModel

    for i, t in enumerate(suite.threats):
        try:
            ThreatModel.parse(t)
        except RobenchError as exc:
            problems.add(("threats", i), str(exc))
    if any("black-box" in ts for ts in [suite.threats, *suite.attack_threats.values()]) and suite.surrogate is None:
        problems.add(("threats",), "threat black-box needs a 'surrogate' (the model the attacker crafts on)")
    for i, d in enumerate(suite.detectors):
        if d not in ("auto", "none"):
            _known("detectors", d, ("detectors", i), problems)
    if suite.dataset is not None:
        check_dataset(suite.dataset, problems)
    for key in ("n", "threads"):
        if getattr(suite, key) is not None and getattr(suite, key) < 1:
            problems.add((key,), f"{key} must be an integer >= 1, got {getattr(suite, key)}")
    if suite.batch_size != "auto" and (isinstance(suite.batch_size, str) or suite.batch_size < 1):
        problems.add(("batch_size",), f"batch_size must be an integer >= 1 or auto, got {suite.batch_size!r}")
    archs = {m.arch for m in suite.models if m.path and m.arch}
    if len(archs) > 1:
        problems.add(("models",), f"checkpoints given by path take one arch per suite, "
                                  f"got {', '.join(sorted(archs))}")
    try:
        resolve_device(suite.device)
    except RobenchError as exc:
        problems.add(("device",), str(exc).replace("--device ", "device "))
    check_executor(suite, problems)
    if suite.amp is not None and suite.amp != "bf16":
        problems.add(("amp",), f"amp must be bf16 (or absent), got '{suite.amp}'")
    _check_unique(suite, problems)


def check_dataset(spec: str, problems: Problems) -> None:
    name, _, arg = spec.partition(":")
    if _known("datasets", name, ("dataset",), problems) and name in PATH_DATASETS:
        if not arg:
            problems.add(("dataset",), f"dataset {name} needs a path: {name}:PATH")
        elif not _exists(arg):
            problems.add(("dataset",), f"dataset {spec}: {arg}: no such file or folder")


def check_executor(suite: Suite, problems: Problems) -> None:
    import importlib.util

    if suite.executor not in EXECUTORS:
        problems.add(("executor",), f"executor must be one of {', '.join(EXECUTORS)}, got '{suite.executor}'")
    elif suite.executor == "ray" and importlib.util.find_spec("ray") is None:
        problems.add(("executor",), "executor ray needs Ray: pip install 'robench[ray]'")


def _check_unique(suite: Suite, problems: Problems) -> None:
    if not suite.models:
        problems.add(("models",), "at least one model is needed")
    if not suite.attacks:
        problems.add(("attacks",), "at least one attack is needed")
    names = [m.name for m in suite.models]
    for i, name in enumerate(names):
        if name in names[:i]:  # result rows and feature files are keyed by the model's name
            problems.add(("models", i), f"two models are named '{name}' (give one another 'name')")
    specs = [a for a, _ in suite.attacks]
    for i, spec in enumerate(specs):
        if spec in specs[:i]:
            problems.add(("attacks", i), f"attack '{spec}' is listed twice")


# -- running -----------------------------------------------------------------------------

def _train_config(train: Dict[str, Any], name: str, dataset: str, device: str):
    from robench.training import TrainConfig

    t = dict(train)
    return TrainConfig(defense=t.pop("defense", "softmax"), dataset=dataset, device=device,
                       defense_params=t.pop("params", None) or {}, **t)


def checkpoint_path(spec: ModelSpec, suite: Suite, out: Path) -> str:
    """Where a model spec's checkpoint is (trained ones: a path from the hash of the train spec)."""
    if spec.path:
        return spec.path
    from robench.devices import resolve_device

    # The resolved device type, so "auto" and "cpu" on a CPU machine share a checkpoint.
    cfg = _train_config(spec.train or {}, spec.name, suite.dataset or "mnist5k",
                        resolve_device(suite.device).type)
    digest = hashlib.sha256(json.dumps(cfg.__dict__, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return str(out / "checkpoints" / digest / f"{spec.name}.pt")


def ensure_trained(spec: ModelSpec, path: str, suite: Suite, quiet: bool) -> None:
    """Train ``spec`` into ``path`` unless a checkpoint is already there (written atomically)."""
    if spec.path or Path(path).is_file():
        return
    from robench.checkpoints import save_checkpoint
    from robench.training import train

    cfg = _train_config(spec.train or {}, spec.name, suite.dataset or "mnist5k", suite.device)
    save_checkpoint(train(cfg, quiet=quiet), path)


def attack_config(suite: Suite, out: Path):
    """The :class:`~robench.runner.AttackConfig` a suite runs into ``out``."""
    from robench.runner import AttackConfig

    models = [checkpoint_path(m, suite, out) for m in suite.models]
    surrogate = checkpoint_path(suite.surrogate, suite, out) if suite.surrogate else None
    archs = {m.arch for m in suite.models if m.path and m.arch}
    return AttackConfig(models=models, attacks=[a for a, _ in suite.attacks], eps=suite.eps,
                        threats=list(suite.threats), surrogate=surrogate, detectors=suite.detectors,
                        dataset=suite.dataset, arch=archs.pop() if len(archs) == 1 else None, n=suite.n,
                        batch_size=suite.batch_size, seed=suite.seed, device=suite.device,
                        attack_eps={a: e for a, e in suite.attacks if e is not None},
                        attack_threats=dict(suite.attack_threats),
                        sanity=suite.sanity, executor=suite.executor, ray_address=suite.ray_address,
                        threads=suite.threads, cascade=suite.cascade, amp=suite.amp, compile=suite.compile)


def run_suite(path: str, out: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
              quiet: bool = False, force: bool = False) -> str:
    """Validate, refuse a foreign run directory, train what must be trained, and run the grid."""
    from robench.results import RunDir
    from robench.runner import check_run_dir, run_attack, torch_threads

    suite = load_suite(path, overrides)
    out_dir = Path(out or suite.out or Path("runs") / Path(path).stem)
    cfg = attack_config(suite, out_dir)
    check_run_dir(str(out_dir), cfg, force)  # before any training
    RunDir.create(out_dir)  # so a run killed while training is resumed, not refused
    specs = suite.models + ([suite.surrogate] if suite.surrogate else [])
    with torch_threads(suite.threads):  # the thread count the cells will use, for training too
        for spec, ckpt in zip(specs, cfg.models + ([cfg.surrogate] if cfg.surrogate else [])):
            ensure_trained(spec, ckpt, suite, quiet)
    return run_attack(cfg, str(out_dir), quiet=quiet, force=force)
