"""``robench run SUITE.yaml``: one file describes the whole grid.

Example::

    dataset: mnist5k
    models:
      - {name: gm, train: {defense: gm, epochs: 6}}
      - {name: softmax, path: checkpoints/softmax.pt}
    surrogate: {name: surrogate, train: {defense: softmax, train_half: b, epochs: 4}}
    attacks:
      - fgsm
      - {name: pgd, steps: 10}
      - {name: cw-l2, binary_search_steps: 4, eps: [0]}
    eps: [0.1, 0.2, 0.3]
    threats: [gray-box, white-box]
    detectors: [auto]
    n: 200
    batch_size: 200
    seed: 0
    device: auto
    executor: local

Validation happens before any work; every problem is reported at once with
its line in the file. Models given as train specs are trained first and cached
under ``OUT/checkpoints`` by a hash of their spec.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from robench.errors import RobenchError, UsageError

TOP_KEYS = {
    "dataset": str, "models": list, "surrogate": (dict, str), "attacks": list, "eps": (list, float, int),
    "threats": (list, str), "detectors": (list, str), "n": int, "batch_size": int, "seed": int,
    "device": str, "executor": str, "ray_address": str, "out": str, "sanity": bool,
}
MODEL_KEYS = {"name": str, "path": str, "arch": str, "train": dict}
TRAIN_KEYS = {"defense": str, "arch": str, "epochs": int, "seed": int, "batch_size": int, "lr": (float, int),
              "feature_dim": int, "train_half": str, "params": dict}
EXECUTORS = ("local", "ray")


class SuiteError(UsageError):
    """All problems of a suite file, one per line in the message."""


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
    batch_size: int = 250
    seed: int = 0
    device: str = "auto"
    executor: str = "local"
    ray_address: Optional[str] = None
    out: Optional[str] = None
    sanity: bool = True


def load_suite(path: str, overrides: Optional[Dict[str, Any]] = None) -> Suite:
    """Parse and validate a suite file; CLI ``overrides`` replace file values."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"suite {path}: no such file")
    try:
        text = p.read_text()
        node = yaml.compose(text)
    except UnicodeDecodeError:
        raise SuiteError(f"suite {path}: not a text file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise SuiteError(f"suite {path}: {where}YAML syntax error: {getattr(exc, 'problem', None) or exc}") from None
    return parse_suite(node, str(path), overrides or {})


def parse_suite(node, where: str, overrides: Dict[str, Any]) -> Suite:
    import yaml

    errors: List[str] = []
    if not isinstance(node, yaml.MappingNode):
        raise SuiteError(f"suite {where}: the top level must be a mapping of keys (dataset, models, attacks, ...)")
    data = yaml.safe_load(yaml.serialize(node)) or {}
    lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    _check_keys(data, TOP_KEYS, lines, "", errors)
    data.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("models", "attacks", "eps"):
        if key not in data:
            errors.append(f"missing required key '{key}'")
    models = [_model(m, i, lines.get("models"), errors) for i, m in enumerate(_as_list(data.get("models")))]
    surrogate = _model(data["surrogate"], 0, lines.get("surrogate"), errors, "surrogate") if data.get("surrogate") else None
    attacks = [_attack(a, lines.get("attacks"), errors) for a in _as_list(data.get("attacks"))]
    eps = [_eps(e, lines.get("eps"), errors) for e in _as_list(data.get("eps"))]
    suite = Suite(dataset=data.get("dataset"), models=models, attacks=attacks, eps=eps,
                  threats=_as_list(data.get("threats", ["gray-box"])), surrogate=surrogate,
                  detectors=_as_list(data.get("detectors", ["auto"])), n=data.get("n", 500),
                  batch_size=data.get("batch_size", 250), seed=data.get("seed", 0),
                  device=data.get("device", "auto"), executor=data.get("executor", "local"),
                  ray_address=data.get("ray_address"), out=data.get("out"), sanity=data.get("sanity", True))
    _check_combinations(suite, lines, errors)
    if errors:
        raise SuiteError(f"suite {where}: " + "; ".join(errors))
    return suite


def _as_list(value: Any) -> List[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _check_keys(data: Dict[str, Any], schema: Dict[str, Any], lines: Dict[str, int], ctx: str,
                errors: List[str]) -> None:
    import difflib

    for key, value in data.items():
        at = f"line {lines[key]}: " if key in lines else ""
        if key not in schema:
            near = difflib.get_close_matches(str(key), list(schema), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            errors.append(f"{at}unknown key '{ctx}{key}'{hint}")
        elif value is not None and not _is_type(value, schema[key]):
            errors.append(f"{at}'{ctx}{key}' must be {_type_name(schema[key])}, got {type(value).__name__}")


def _is_type(value: Any, types: Any) -> bool:
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _type_name(types: Any) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {str: "a string", list: "a list", dict: "a mapping", int: "an integer", float: "a number", bool: "true/false"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _model(entry: Any, i: int, line: Optional[int], errors: List[str], role: str = "models") -> ModelSpec:
    at = f"line {line}: " if line else ""
    if isinstance(entry, str):
        return ModelSpec(name=Path(entry).stem, path=entry)
    if not isinstance(entry, dict):
        errors.append(f"{at}{role}[{i}] must be a path or a mapping with path or train")
        return ModelSpec(name=f"model{i}")
    _check_keys(entry, MODEL_KEYS, {}, f"{role}[{i}].", errors)
    if bool(entry.get("path")) == bool(entry.get("train")):
        errors.append(f"{at}{role}[{i}] needs exactly one of 'path' and 'train'")
    train = entry.get("train") if isinstance(entry.get("train"), dict) else None
    if train is not None:
        _check_keys(train, TRAIN_KEYS, {}, f"{role}[{i}].train.", errors)
        if "defense" not in train:
            errors.append(f"{at}{role}[{i}].train needs 'defense'")
    name = str(entry.get("name") or (Path(entry["path"]).stem if entry.get("path") else f"{role}{i}"))
    return ModelSpec(name=name, path=entry.get("path"), arch=entry.get("arch"), train=train)


def _attack(entry: Any, line: Optional[int], errors: List[str]) -> Tuple[str, Optional[List[float]]]:
    from robench.specs import format_spec, parse_spec

    at = f"line {line}: " if line else ""
    if isinstance(entry, str):
        try:
            parse_spec(entry)
        except RobenchError as exc:
            errors.append(f"{at}attack '{entry}': {exc}")
        return entry, None
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        errors.append(f"{at}each attack must be a name or a mapping with 'name'")
        return "?", None
    kwargs = {k: v for k, v in entry.items() if k not in ("name", "eps")}
    eps = [_eps(e, line, errors) for e in _as_list(entry["eps"])] if "eps" in entry else None
    return format_spec(entry["name"], kwargs), eps


def _eps(value: Any, line: Optional[int], errors: List[str]) -> float:
    at = f"line {line}: " if line else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= 1:
        errors.append(f"{at}eps must be numbers in [0, 1], got {value!r}")
        return 0.0
    return float(value)


def _check_combinations(suite: Suite, lines: Dict[str, int], errors: List[str]) -> None:
    from robench.threats import ThreatModel

    for t in suite.threats:
        try:
            ThreatModel.parse(str(t))
        except RobenchError as exc:
            errors.append(f"line {lines.get('threats', '?')}: {exc}")
    if "black-box" in suite.threats and suite.surrogate is None:
        errors.append(f"line {lines.get('threats', '?')}: threat black-box needs a 'surrogate'")
    if suite.executor not in EXECUTORS:
        errors.append(f"line {lines.get('executor', '?')}: executor must be one of {', '.join(EXECUTORS)}")
    for key in ("n", "batch_size"):
        value = getattr(suite, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(f"line {lines.get(key, '?')}: {key} must be an integer >= 1")
    if not suite.models:
        errors.append(f"line {lines.get('models', '?')}: at least one model is needed")
    if not suite.attacks:
        errors.append(f"line {lines.get('attacks', '?')}: at least one attack is needed")


def resolve_checkpoint(spec: ModelSpec, suite: Suite, out: Path, quiet: bool) -> str:
    """A path for a model spec, training it first (cached by a hash of the train spec)."""
    if spec.path:
        return spec.path
    from robench.checkpoints import save_checkpoint
    from robench.training import TrainConfig, train

    t = dict(spec.train or {})
    cfg = TrainConfig(defense=t.pop("defense"), dataset=suite.dataset or "mnist5k",
                      defense_params=t.pop("params", {}) or {}, device=suite.device,
                      **{k: v for k, v in t.items()})
    digest = hashlib.sha256(json.dumps(cfg.__dict__, sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = out / "checkpoints" / f"{spec.name}-{digest}.pt"
    if not path.is_file():
        save_checkpoint(train(cfg, quiet=quiet), path)
    return str(path)


def run_suite(path: str, out: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None,
              quiet: bool = False, force: bool = False) -> str:
    """Validate, train what must be trained, and run the grid into ``out``."""
    from robench.runner import AttackConfig, run_attack

    from robench.results import RunDir

    suite = load_suite(path, overrides)
    out_dir = Path(out or suite.out or Path("runs") / Path(path).stem)
    RunDir.create(out_dir)  # refuses a foreign folder before any training
    models = [resolve_checkpoint(m, suite, out_dir, quiet) for m in suite.models]
    surrogate = resolve_checkpoint(suite.surrogate, suite, out_dir, quiet) if suite.surrogate else None
    cfg = AttackConfig(models=models, attacks=[a for a, _ in suite.attacks], eps=suite.eps,
                       threats=[str(t) for t in suite.threats], surrogate=surrogate, detectors=suite.detectors,
                       dataset=suite.dataset, arch=None, n=suite.n, batch_size=suite.batch_size, seed=suite.seed,
                       device=suite.device, attack_eps={a: e for a, e in suite.attacks if e is not None},
                       sanity=suite.sanity, executor=suite.executor, ray_address=suite.ray_address)
    return run_attack(cfg, str(out_dir), quiet=quiet, force=force)
