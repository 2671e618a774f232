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

The top-level keys are the fields of :class:`robench.config.RunConfig` (plus
``out``); validation happens before any work, and every problem (unknown keys at
any depth, wrong types, unknown names, missing files, impossible combinations) is
reported at once with its line in the file. Command-line options override file
values. Models given as train specs are trained first and cached as
``OUT/checkpoints/<hash of the train spec>/<name>.pt``; ``seed`` is the
attacks' seed, a model's training seed is ``train.seed`` (default 0).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from robench.config import OPTIONS, RunConfig, eps_problem, parse_value, suite_keys
from robench.errors import RobenchError, UsageError
from robench.suite_check import Path_, Problems, SuiteError, check_keys, is_type, known, node_lines
from robench.validation import config_problems

TOP_KEYS = {**suite_keys(), "out": str}
MODEL_KEYS = {"name": str, "path": str, "arch": str, "train": dict}
TRAIN_KEYS = {"defense": str, "arch": str, "epochs": int, "seed": int, "batch_size": int, "lr": (float, int),
              "feature_dim": int, "train_half": str, "params": dict}
PATH_DATASETS = ("mnist", "cifar10", "npz")  # name:PATH specs whose PATH must exist


@dataclass
class ModelSpec:
    name: str
    path: Optional[str] = None
    arch: Optional[str] = None
    train: Optional[Dict[str, Any]] = None


@dataclass
class Suite:
    """A parsed suite: the run's configuration (its models still specs) and where it goes."""

    config: RunConfig  # models and surrogate are filled in by attack_config (they depend on out)
    models: List[ModelSpec]
    surrogate: Optional[ModelSpec] = None
    out: Optional[str] = None
    attacks: List[Tuple[str, Optional[List[float]]]] = field(default_factory=list)


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
    check_keys(given, TOP_KEYS, (), problems)
    data = {**data, **given}
    for key in ("models", "attacks", "eps"):
        if key not in data:
            problems.add((), f"missing required key '{key}'")
    models = [model_spec(m, ("models", i), problems) for i, m in enumerate(_list(data, "models"))]
    surrogate = model_spec(data["surrogate"], ("surrogate",), problems) if data.get("surrogate") else None
    threats: Dict[str, List[str]] = {}
    attacks = [attack_spec(a, ("attacks", i), problems, threats) for i, a in enumerate(_list(data, "attacks"))]
    cfg = RunConfig(**_scalars(data), attacks=[a for a, _ in attacks],
                    attack_eps={a: e for a, e in attacks if e is not None}, attack_threats=threats,
                    surrogate="<surrogate>" if surrogate else None, arch=_path_arch(models, problems))
    for problem in config_problems(cfg, files=False):
        if problem.where[:1] != ("attacks",) or {"threats", "eps"} & set(problem.where):  # arguments: above
            problems.add(problem.where, problem.text())
    if isinstance(data.get("dataset"), str):
        check_dataset(data["dataset"], problems)
    _check_unique(models, attacks, problems)
    problems.raise_if_any(source)
    out = data.get("out") if isinstance(data.get("out"), str) else None
    return Suite(cfg, models, surrogate, out, attacks)


def _scalars(data: Dict[str, Any]) -> Dict[str, Any]:
    """The schema's plain keys with a value of the right type (wrong types were reported)."""
    out = {}
    for key, spec in OPTIONS.items():
        if spec.suite == "key" and key in data and data[key] is not None and is_type(data[key], TOP_KEYS[key]):
            value = parse_value(key, data[key])
            if key == "eps":
                value = [float(e) if isinstance(e, (int, float)) and not isinstance(e, bool) else e for e in value]
            out[key] = value
    return out


def _list(data: Dict[str, Any], key: str) -> List[Any]:
    return data[key] if isinstance(data.get(key), list) else []


def _path_arch(models: List[ModelSpec], problems: Problems) -> Optional[str]:
    archs = {m.arch for m in models if m.path and m.arch}
    if len(archs) > 1:
        problems.add(("models",), f"checkpoints given by path take one arch per suite, got {', '.join(sorted(archs))}")
    return archs.pop() if len(archs) == 1 else None


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
            known("archs", entry["arch"], where + ("arch",), problems)
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
        known("defenses", train["defense"], where + ("defense",), problems)
    if isinstance(train.get("arch"), str):
        known("archs", train["arch"], where + ("arch",), problems)
    if train.get("train_half") not in (None, "a", "b"):
        problems.add(where + ("train_half",), f"{label}.train.train_half must be 'a' or 'b'")
    for key in ("epochs", "batch_size", "feature_dim", "lr"):
        value = train.get(key)
        if is_type(value, TRAIN_KEYS[key]) and not (value > 0 and math.isfinite(value)):
            problems.add(where + (key,), f"{label}.train.{key} must be positive, got {value}")


def _exists(path: str, file: bool = False) -> bool:
    try:
        return Path(path).is_file() if file else Path(path).exists()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


# -- attacks ----------------------------------------------------------------------------

def attack_spec(entry: Any, where: Path_, problems: Problems,
                threats: Dict[str, List[str]]) -> Tuple[str, Optional[List[float]]]:
    """An attack entry: ``name[:key=value,...]`` or ``{name: ..., eps: [...], threats: [...], <arguments>}``.

    Returns (spec, eps override); a ``threats`` override goes into ``threats[spec]``.
    """
    from robench.specs import format_spec
    from robench.validation import attack_problems

    if isinstance(entry, str):
        for _, message in attack_problems(entry):
            problems.add(where, message)
        return entry, None
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        problems.add(where, "each attack must be a name or a mapping with 'name'")
        return "?", None
    kwargs = {k: v for k, v in entry.items() if k not in ("name", "eps", "threats")}
    if not all(isinstance(k, str) for k in kwargs):
        problems.add(where, f"attack {entry['name']}: argument names must be strings")
        return "?", None
    for key, message in attack_problems(entry["name"], kwargs):
        problems.add(where + ((key,) if key in kwargs else ("name",)), message)
    for key, value in kwargs.items():
        if not (value is None or isinstance(value, (str, int, float, bool))):
            problems.add(where + (key,), f"attack {entry['name']}: '{key}' must be a single value, "
                                         f"got {type(value).__name__}")
    eps = None
    if "eps" in entry:
        eps = [_eps(e, where + ("eps", i), problems) for i, e in enumerate(parse_value("eps", entry["eps"]))]
    spec = format_spec(entry["name"], kwargs)
    if "threats" in entry:
        own = [str(t) for t in parse_value("threats", entry["threats"])]
        if not own:
            problems.add(where + ("threats",), f"attack {entry['name']}: threats must not be empty")
        threats[spec] = own
    return spec, eps


def _eps(value: Any, where: Path_, problems: Problems) -> float:
    message = eps_problem(value, linf=False)  # the norm's bound: validation.eps_problems
    if message:
        problems.add(where, message.replace("{name}", "eps"))
        return 0.0
    return float(value)


# -- the grid as a whole ----------------------------------------------------------------

def check_dataset(spec: str, problems: Problems) -> None:
    name, _, arg = spec.partition(":")
    if known("datasets", name, ("dataset",), problems) and name in PATH_DATASETS:
        if not arg:
            problems.add(("dataset",), f"dataset {name} needs a path: {name}:PATH")
        elif not _exists(arg):
            problems.add(("dataset",), f"dataset {spec}: {arg}: no such file or folder")


def _check_unique(models: List[ModelSpec], attacks: List[Tuple[str, Any]], problems: Problems) -> None:
    if not models:
        problems.add(("models",), "at least one model is needed")
    if not attacks:
        problems.add(("attacks",), "at least one attack is needed")
    names = [m.name for m in models]
    for i, name in enumerate(names):
        if name in names[:i]:  # result rows and feature files are keyed by the model's name
            problems.add(("models", i), f"two models are named '{name}' (give one another 'name')")
    specs = [a for a, _ in attacks]
    for i, spec in enumerate(specs):
        if spec in specs[:i]:
            problems.add(("attacks", i), f"attack '{spec}' is listed twice")


# -- running -----------------------------------------------------------------------------

def _train_config(train: Dict[str, Any], dataset: str, device: str):
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
    cfg = _train_config(spec.train or {}, suite.config.dataset or "mnist5k",
                        resolve_device(suite.config.device).type)
    digest = hashlib.sha256(json.dumps(cfg.__dict__, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return str(out / "checkpoints" / digest / f"{spec.name}.pt")


def ensure_trained(spec: ModelSpec, path: str, suite: Suite, quiet: bool) -> None:
    """Train ``spec`` into ``path`` unless a checkpoint is already there (written atomically)."""
    if spec.path or Path(path).is_file():
        return
    from robench.checkpoints import save_checkpoint
    from robench.training import train

    from robench.runner import warn_if_weak

    cfg = _train_config(spec.train or {}, suite.config.dataset or "mnist5k", suite.config.device)
    model = train(cfg, quiet=quiet)
    save_checkpoint(model, path)
    warn_if_weak(model)  # the attack cells will say so again; the sanity report flags it


def attack_config(suite: Suite, out: Path) -> RunConfig:
    """The run configuration a suite runs into ``out`` (its models as checkpoint paths)."""
    models = [checkpoint_path(m, suite, out) for m in suite.models]
    surrogate = checkpoint_path(suite.surrogate, suite, out) if suite.surrogate else None
    return suite.config.replace(models=models, surrogate=surrogate)


def run_suite(path: str, out: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
              quiet: bool = False, force: bool = False):
    """Validate, refuse a foreign run directory, train what must be trained, and run the grid."""
    from robench.devices import torch_threads
    from robench.rundir import RunDir
    from robench.runner import check_out, run_attack

    suite = load_suite(path, overrides)
    out_dir = Path(out or suite.out or Path("runs") / Path(path).stem)
    cfg = attack_config(suite, out_dir)
    check_out(str(out_dir), cfg, force)  # before any training
    specs = suite.models + ([suite.surrogate] if suite.surrogate else [])
    # Opened (and locked) before training, so a second process neither trains nor attacks here.
    with RunDir.open(out_dir, command="robench run") as run, torch_threads(cfg.threads):
        for spec, ckpt in zip(specs, cfg.models + ([cfg.surrogate] if cfg.surrogate else [])):
            ensure_trained(spec, ckpt, suite, quiet)
        return run_attack(cfg, run, quiet=quiet, force=force)


__all__ = ["Suite", "ModelSpec", "SuiteError", "load_suite", "parse_suite", "run_suite", "attack_config",
           "RobenchError"]
