"""``robench attack``: the grid of (model, attack, eps, threat, detector) cells.

One straight line: load each model and its data splits, fit and calibrate the
detectors on train/val, craft adversarial examples on the test points under
each threat model, recompute predictions and scores, and write one cell per
(model, attack, eps, threat, detector) into the run directory. Finished cells
are never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from robench.errors import RobenchError, UsageError
from robench.threats import ThreatModel


@dataclass
class AttackConfig:
    """The resolved configuration of one ``robench attack`` run (written to the manifest)."""

    models: List[str]
    attacks: List[str]
    eps: List[float]
    threats: List[str] = field(default_factory=lambda: ["gray-box"])
    surrogate: Optional[str] = None
    detectors: List[str] = field(default_factory=lambda: ["auto"])
    dataset: Optional[str] = None
    arch: Optional[str] = None
    n: int = 500
    batch_size: int = 250
    seed: int = 0
    device: str = "auto"
    attack_eps: Dict[str, List[float]] = field(default_factory=dict)  # per-attack eps overrides
    sanity: bool = True
    executor: str = "local"  # or "ray"
    ray_address: Optional[str] = None

    def eps_for(self, spec: str) -> List[float]:
        return self.attack_eps.get(spec, self.eps)

    def validate(self) -> None:
        from robench.registry import registry
        from robench.specs import parse_spec

        for e in [*self.eps, *(v for vs in self.attack_eps.values() for v in vs)]:
            if not (math.isfinite(e) and 0.0 <= e <= 1.0):
                raise UsageError(f"--eps must be a number in [0, 1] (pixel space), got {e}")
        if self.n < 1:
            raise UsageError(f"--n must be >= 1, got {self.n}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be >= 1, got {self.batch_size}")
        threats = [ThreatModel.parse(t) for t in self.threats]
        if ThreatModel.BLACK_BOX in threats and not self.surrogate:
            raise UsageError("--threat black-box needs --surrogate CKPT (the model the attacker crafts on)")
        for spec in self.attacks:
            name, kwargs = parse_spec(spec)
            registry("attacks").entry(name)
            _check_attack_kwargs(name, kwargs)
        for det in self.detectors:
            if det not in ("auto", "none"):
                registry("detectors").entry(det)
        for path in self.models + ([self.surrogate] if self.surrogate else []):
            if not Path(path).is_file():
                raise UsageError(f"checkpoint {path}: no such file")


def _check_attack_kwargs(name: str, kwargs: Dict[str, Any]) -> None:
    for key in ("steps", "restarts", "binary_search_steps"):
        if key in kwargs and (not isinstance(kwargs[key], int) or kwargs[key] < 1):
            raise UsageError(f"attack {name}: {key} must be an integer >= 1, got {kwargs[key]!r}")
    if "eps" in kwargs:
        raise UsageError(f"attack {name}: give eps with --eps, not in the attack spec")


@dataclass
class ModelContext:
    """A loaded model with its test points and fitted detectors."""

    path: str
    model: Any
    sha256: str
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    clean_pred: torch.Tensor
    detectors: Dict[str, Any]
    dataset: str


def run_attack(cfg: AttackConfig, out: str, quiet: bool = False, force: bool = False) -> str:
    """Run every cell of ``cfg`` into the run directory ``out``; return a summary table."""
    from robench.devices import resolve_device
    from robench.results import RunDir

    cfg.validate()
    device = resolve_device(cfg.device)
    run = open_run(out, cfg, force, device)
    started = time.time()
    surrogate = _load(cfg.surrogate, cfg.arch, device) if cfg.surrogate else None
    contexts, jobs, cached = {}, [], 0
    for path in cfg.models:
        ctx = prepare_model(path, cfg, device)
        contexts[path] = ctx
        if surrogate is not None:
            _check_surrogate(surrogate, ctx)
        run.write_features(ctx.model.info.name, _features(ctx, cfg.batch_size), ctx.y, ctx.clean_pred, ctx.index)
        for cell in plan_cells(cfg, ctx):
            if all(run.has_cell(i) for i in cell.output_ids()):
                cached += 1
            else:
                jobs.append((path, cell))
    from robench.executors import make_executor

    executor = make_executor(cfg)
    done = 0
    for outputs, seconds in executor.run(jobs, contexts, surrogate, cfg, quiet):
        for cell_id, row, samples, adv_f, x_adv in outputs:
            run.write_cell(cell_id, row, samples, adv_f, x_adv)
            run.write_timing(cell_id, seconds)
        done += 1
    run.finalize()
    named = {c.model.info.name: (c.model, c.x, c.y) for c in contexts.values()}
    sanity = write_sanity(run, named, cfg) if cfg.sanity else None
    _finish_manifest(run, started)
    return summary_table(run, done, cached, time.time() - started, sanity)


def write_sanity(run, contexts, cfg: AttackConfig):
    from robench.results import atomic_write_csv
    from robench.sanity import sanity_report

    report = sanity_report(run.results(), contexts, seed=cfg.seed)
    atomic_write_csv(Path(run.path) / "sanity.csv", report)
    return report


# -- preparing -----------------------------------------------------------------------

def open_run(out: str, cfg: AttackConfig, force: bool, device=None):
    from robench.results import RunDir, atomic_write_json, collect_versions, git_hash

    # Where cells run does not change what they compute: not part of the identity.
    config = {"command": "attack", **{k: v for k, v in asdict(cfg).items() if k not in ("executor", "ray_address")}}
    run = RunDir.create(out)
    manifest_path = Path(out) / "manifest.json"
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text()).get("config")
        if old != config and not force:
            raise UsageError(f"--out {out}: run directory was made with a different configuration "
                             f"(use --force to overwrite, or another --out)")
        if old != config:
            run.clear()
    atomic_write_json(manifest_path, {
        "config": config, "versions": collect_versions(), "git": git_hash(),
        "device": str(device or cfg.device), "executor": cfg.executor, "torch_threads": torch.get_num_threads(), "seeds": {"seed": cfg.seed}, "start_time": _now(), "end_time": None,
        "determinism": {"torch_deterministic": torch.are_deterministic_algorithms_enabled()},
    })
    return run


def _load(path: str, arch: Optional[str], device):
    from robench.checkpoints import load_model

    return load_model(path, arch=arch, device=device)


def prepare_model(path: str, cfg: AttackConfig, device) -> ModelContext:
    from robench.checkpoints import file_sha256
    from robench.data import load_dataset

    model = _load(path, cfg.arch, device)
    spec = cfg.dataset or model.info.dataset
    if spec in ("mnist", "cifar10"):
        raise UsageError(f"checkpoint {path} (official GM-Loss) does not say where its data is: "
                         f"pass --dataset {spec}:PATH")
    data = load_dataset(spec, seed=int(model.info.split.get("seed", cfg.seed)),
                        train_half=model.info.split.get("train_half"))
    _check_compatible(model, data, path)
    x, y = data.split("test", cfg.n)
    index = data.indices("test", cfg.n)
    clean_pred = model.predict(x, cfg.batch_size)
    detectors = fit_detectors(model, data, cfg)
    return ModelContext(path, model, file_sha256(path), x, y, index, clean_pred, detectors, spec)


def _check_compatible(model, data, path: str) -> None:
    if tuple(model.info.input_shape) != tuple(data.input_shape):
        raise UsageError(f"checkpoint {path} expects inputs {tuple(model.info.input_shape)} "
                         f"but dataset {data.spec} has {tuple(data.input_shape)}")
    if model.num_classes != data.num_classes:
        raise UsageError(f"checkpoint {path} has {model.num_classes} classes but dataset "
                         f"{data.spec} has {data.num_classes}")


def _check_surrogate(surrogate, ctx: ModelContext) -> None:
    if tuple(surrogate.info.input_shape) != tuple(ctx.model.info.input_shape) or \
            surrogate.num_classes != ctx.model.num_classes:
        raise UsageError(
            f"--surrogate {surrogate.info.name}: inputs {tuple(surrogate.info.input_shape)} with "
            f"{surrogate.num_classes} classes do not match the target's "
            f"{tuple(ctx.model.info.input_shape)} with {ctx.model.num_classes} classes")


def fit_detectors(model, data, cfg: AttackConfig) -> Dict[str, Any]:
    from robench.defenses.detectors import create_detector

    out: Dict[str, Any] = {}
    for name in cfg.detectors:
        if name == "none":
            out["none"] = None
            continue
        det = create_detector(name, model)
        x_tr, y_tr = data.split("train")
        det.fit(x_tr, y_tr, batch_size=cfg.batch_size)
        det.calibrate(data.split("val")[0], batch_size=cfg.batch_size)
        out[det.name] = det
    return out


def _features(ctx: ModelContext, batch_size: int) -> torch.Tensor:
    from robench.models import batched

    with torch.no_grad():
        return batched(ctx.model.features, ctx.x, batch_size, ctx.model.device)


# -- cells ---------------------------------------------------------------------------

@dataclass
class Cell:
    """One attack run; under white-box one per detector, otherwise shared by all detectors."""

    cell_id: str
    attack: str
    kwargs: Dict[str, Any]
    eps: float
    threat: ThreatModel
    detectors: List[str]
    seed: int

    def output_ids(self) -> List[str]:
        """The ids of the cells this attack run writes (one per detector)."""
        if len(self.detectors) == 1:
            return [self.cell_id]
        return [f"{self.cell_id}-{d}" for d in self.detectors]


def plan_cells(cfg: AttackConfig, ctx: ModelContext) -> List[Cell]:
    from robench import __version__
    from robench.specs import parse_spec

    cells = []
    index_digest = hashlib.sha256(ctx.index.numpy().tobytes()).hexdigest()
    for spec in cfg.attacks:
        name, kwargs = parse_spec(spec)
        for eps in cfg.eps_for(spec):
            for threat in (ThreatModel.parse(t) for t in cfg.threats):
                groups = [[d] for d in ctx.detectors] if threat == ThreatModel.WHITE_BOX else [list(ctx.detectors)]
                for dets in groups:
                    key = json.dumps({"model": ctx.sha256, "attack": name, "kwargs": kwargs, "eps": eps,
                                      "threat": threat.value, "detectors": dets, "index": index_digest,
                                      "seed": cfg.seed, "surrogate": cfg.surrogate and _sha(cfg.surrogate),
                                      "version": __version__}, sort_keys=True, default=str)
                    digest = hashlib.sha256(key.encode()).hexdigest()
                    cells.append(Cell(digest[:16], name, kwargs, eps, threat, dets,
                                      int(digest[16:24], 16) ^ cfg.seed))
    return cells


def _sha(path: str) -> str:
    from robench.checkpoints import file_sha256

    return file_sha256(path)


def run_cell(cell: Cell, ctx: ModelContext, surrogate, cfg: AttackConfig, quiet: bool):
    """Craft and evaluate one cell; yields (cell_id, row, samples, adv_features, x_adv) per detector."""
    from robench.evaluate import craft, evaluate_cell, white_box

    if cell.threat == ThreatModel.WHITE_BOX:
        det_name = cell.detectors[0]
        x_adv, passes, objective, wins = white_box(cell, ctx, cfg, quiet)
    else:
        source = surrogate if cell.threat == ThreatModel.BLACK_BOX else ctx.model
        x_adv, passes, objective = craft(cell, source, ctx.x, ctx.y, cfg, quiet, objective=None)
        wins = ""
    results = []
    for det_name, sub_id in zip(cell.detectors, cell.output_ids()):
        row, samples, adv_f = evaluate_cell(cell, ctx, det_name, x_adv, cfg)
        row.update({"objective": objective, "passes_per_sample": round(passes / len(ctx.y), 2),
                    "objective_wins": wins})
        samples.insert(0, "cell_id", sub_id)
        results.append((sub_id, row, samples, adv_f, x_adv))
    return results


# -- finishing ------------------------------------------------------------------------

def _finish_manifest(run, started: float) -> None:
    from robench.results import atomic_write_json

    path = Path(run.path) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["end_time"] = _now()
    manifest["wall_seconds"] = round(time.time() - started, 1)
    atomic_write_json(path, manifest)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def summary_table(run, done: int, cached: int, seconds: float, sanity=None) -> str:
    df = run.results()
    cols = [c for c in ("model", "attack", "eps", "threat", "detector", "objective", "clean_acc",
                        "robust_acc", "auc", "auc_successful") if c in df.columns]
    table = df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}") if len(df) else "(no rows)"
    flags = ""
    if sanity is not None and len(sanity):
        bad = sanity[sanity["flagged"]]
        flags = "\n\nsanity: " + ("no flags" if bad.empty else "FLAGGED\n" + "\n".join(
            f"  {r.model}: {r.check}: {r.evidence}" for r in bad.itertuples()))
    return f"{table}{flags}\n\n{done} cells run, {cached} cached, {seconds:.0f} s -> {run.path}"
