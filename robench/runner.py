"""``robench attack``: the grid of (model, attack, eps, threat, detector) cells.

One straight line: load each model and its data splits, fit and calibrate the
detectors on train/val, craft adversarial examples on the test points under
each threat model, recompute predictions and scores, and write one cell per
(model, attack, eps, threat, detector) into the run directory.

A cell's id is a content hash of everything that decides its numbers (the
checkpoint's sha256, attack and parameters, eps, threat, detectors, the test
points' indices and bytes, batch size, device type, seed, robench's version), so finished cells
are never recomputed and a changed parameter makes a new cell. Each cell's
attack draws from its own generator seeded from (seed, cell key), and every
cell runs with the same torch thread count, so a killed and resumed run, a
repeated run and a Ray run all write the same results.csv byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch

from robench.errors import UsageError
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
    batch_size: Any = 250  # an int, or "auto" (see robench.batching), resolved before any cell
    seed: int = 0
    device: str = "auto"
    attack_eps: Dict[str, List[float]] = field(default_factory=dict)  # per-attack eps overrides
    attack_threats: Dict[str, List[str]] = field(default_factory=dict)  # per-attack threat overrides
    sanity: bool = True
    executor: str = "local"  # or "ray"
    ray_address: Optional[str] = None
    threads: Optional[int] = None  # torch threads for every cell, wherever it runs (None: this process's)
    cascade: bool = False  # each further attack (and restart) only on the points still robust
    amp: Optional[str] = None  # "bf16": attack forward passes under bfloat16 autocast (evaluation stays fp32)
    compile: bool = False  # attack forward passes through torch.compile

    def eps_for(self, spec: str) -> List[float]:
        return self.attack_eps.get(spec, self.eps)

    def threats_for(self, spec: str) -> List[str]:
        return self.attack_threats.get(spec, self.threats)

    def validate(self) -> None:
        from robench.registry import registry
        from robench.specs import parse_spec

        for e in [*self.eps, *(v for vs in self.attack_eps.values() for v in vs)]:
            if not (math.isfinite(e) and 0.0 <= e <= 1.0):
                raise UsageError(f"--eps must be a number in [0, 1] (pixel space), got {e}")
        if self.n < 1:
            raise UsageError(f"--n must be >= 1, got {self.n}")
        from robench.batching import parse_batch_size

        parse_batch_size(self.batch_size)
        if self.amp not in (None, "bf16"):
            raise UsageError(f"--amp must be bf16 (or not given), got '{self.amp}'")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"threads must be >= 1, got {self.threads}")
        threats = [ThreatModel.parse(t) for t in [*self.threats, *(t for ts in self.attack_threats.values()
                                                                     for t in ts)]]
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
        stems = [Path(p).stem for p in self.models]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:  # rows and feature files are keyed by the checkpoint's file stem
            raise UsageError(f"two models would both be named {', '.join(twice)} (the checkpoint's file "
                             f"stem); rename one of the files")


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
    """Run every cell of ``cfg`` into the run directory ``out``; return a summary table.

    Finished cells (``out/cells/<id>``) are reused, never recomputed; cells of an
    earlier configuration that this one does not plan are removed. The caller's
    global RNG state is left as it was: every cell draws from its own generator.
    """
    from robench.evaluate import _CRAFTED

    _CRAFTED.clear()
    cfg.validate()
    # CPU matrix products split their sums by thread count, so one count for every cell
    # (here and in Ray workers) keeps the numbers identical wherever a cell runs.
    cfg = replace(cfg, threads=cfg.threads or torch.get_num_threads())
    with torch_threads(cfg.threads):
        return _run_grid(cfg, out, quiet, force)


def _run_grid(cfg: AttackConfig, out: str, quiet: bool, force: bool) -> str:
    from robench.devices import resolve_device
    from robench.executors import make_executor

    device = resolve_device(cfg.device)
    run = open_run(out, cfg, force, device)
    started = time.time()
    if cfg.batch_size == "auto":
        cfg = replace(cfg, batch_size=resolve_batch_size(cfg, device))
        _note_manifest(run, batch_size=cfg.batch_size)
    surrogate = _load(cfg.surrogate, cfg.arch, device) if cfg.surrogate else None
    contexts, jobs, seeds, cached = {}, [], {}, 0
    for path in cfg.models:
        ctx = prepare_model(path, cfg, device)
        contexts[path] = ctx
        if surrogate is not None:
            _check_surrogate(surrogate, ctx)
        run.write_features(ctx.model.info.name, _features(ctx, cfg.batch_size), ctx.y, ctx.clean_pred, ctx.index)
        for cell in plan_cells(cfg, ctx):
            for part in cell.cells if isinstance(cell, Chain) else [cell]:
                seeds.update({i: part.seed for i in part.output_ids()})
            if all(run.has_cell(i) for i in cell.output_ids()):
                cached += 1
            else:
                jobs.append((path, cell))
    prune_cells(run, set(seeds))
    done = 0
    executor = make_executor(cfg) if jobs else None
    for outputs, seconds in executor.run(jobs, contexts, surrogate, cfg, quiet) if executor else []:
        for cell_id, row, samples, adv_f, x_adv in outputs:
            if cfg.cascade and run.has_cell(cell_id):  # a resumed chain recomputes its finished cells
                continue
            run.write_cell(cell_id, row, samples, adv_f, x_adv, seconds=seconds)
        done += 1
    run.finalize()
    named = {c.model.info.name: (c.model, c.x, c.y) for c in contexts.values()}
    extra = amp_checks(cfg, contexts) if cfg.sanity and cfg.amp else []
    sanity = write_sanity(run, named, cfg, extra) if cfg.sanity else None
    _finish_manifest(run, started, seeds, done, cached)
    return summary_table(run, done, cached, time.time() - started, sanity)


def resolve_batch_size(cfg: AttackConfig, device) -> int:
    """``auto``: the largest batch every model's attack step fits (the smallest over the models)."""
    from robench.batching import auto_batch_size

    sizes = []
    for path in cfg.models + ([cfg.surrogate] if cfg.surrogate else []):
        model = _load(path, cfg.arch, device)
        sizes.append(auto_batch_size(model, model.info.input_shape, cfg.n))
        del model
    return min(sizes)


def _note_manifest(run, **values: Any) -> None:
    """Add ``values`` to the run's manifest.json (read, update, atomic write)."""
    from robench.results import atomic_write_json

    path = Path(run.path) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(values)
    atomic_write_json(path, manifest)


def amp_checks(cfg: AttackConfig, contexts: Dict[str, ModelContext]) -> List[Dict[str, Any]]:
    """Per model, the first planned attack with eps > 0 crafted in fp32 and under ``cfg.amp``."""
    from robench.evaluate import amp_agreement

    rows = []
    for ctx in contexts.values():
        cells = [c for item in plan_cells(cfg, ctx) for c in (item.cells if isinstance(item, Chain) else [item])]
        cells = [c for c in cells if c.eps > 0 and not c.attack.startswith(("ta:", "art:"))]
        if cells:
            rows.append(amp_agreement(cells[0], ctx, cfg))
    return rows


def write_sanity(run, contexts, cfg: AttackConfig, extra: Optional[List[Dict[str, Any]]] = None):
    from robench.results import atomic_write_csv
    from robench.sanity import sanity_report

    report = sanity_report(run.results(), contexts, seed=cfg.seed, batch_size=cfg.batch_size, extra=extra)
    atomic_write_csv(Path(run.path) / "sanity.csv", report)
    return report


# -- preparing -----------------------------------------------------------------------

_HOW = ("executor", "ray_address", "threads")  # where and how cells run: not what they compute


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run a block with ``n`` torch threads (None: as it is), restoring the count after."""
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def run_identity(cfg: AttackConfig) -> Dict[str, Any]:
    """What a run directory is bound to: the configuration, less where its cells run."""
    from robench.results import to_jsonable

    config = {"command": "attack", **{k: v for k, v in asdict(cfg).items() if k not in _HOW}}
    return json.loads(json.dumps(to_jsonable(config), sort_keys=True))


def check_run_dir(out: str, cfg: AttackConfig, force: bool) -> bool:
    """Refuse ``out`` if it is not a run directory, or one made with another configuration.

    Touches nothing, so a suite can call it before training. Returns whether
    ``out`` holds a run of another configuration (allowed only with ``force``).
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    manifest = path / "manifest.json"
    if path.is_dir() and any(path.iterdir()) and not (manifest.is_file() or (path / "cells").is_dir()):
        raise UsageError(f"--out {out}: folder exists, is not empty and is not a robench run directory; "
                         f"choose another --out")
    if not manifest.is_file():
        return False
    try:
        old = json.loads(manifest.read_text(encoding="utf-8")).get("config")
    except (OSError, ValueError, AttributeError):
        old = None
    new = run_identity(cfg)
    if old == new:
        return False
    if not force:
        raise UsageError(f"--out {out}: this run directory was made with a different configuration "
                         f"({_config_diff(old, new)}); use --force to replace it (finished cells that "
                         f"still match are kept), or choose another --out")
    return True


def _config_diff(old: Any, new: Dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "its manifest.json has no readable configuration"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    parts = [f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}" for k in keys[:4]]
    return "; ".join(parts) + (f"; and {len(keys) - 4} more" if len(keys) > 4 else "")


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def open_run(out: str, cfg: AttackConfig, force: bool, device=None):
    """Create or reopen the run directory and write its manifest (cells are kept: see :func:`prune_cells`)."""
    from robench.results import RunDir, atomic_write_json, collect_versions, git_hash

    replacing = check_run_dir(out, cfg, force)
    run = RunDir.create(out)
    _remove_leftovers(Path(out), replacing)
    atomic_write_json(Path(out) / "manifest.json", {
        "config": run_identity(cfg), "versions": collect_versions(), "git": git_hash(),
        "device": str(device or cfg.device), "executor": cfg.executor, "seeds": {"seed": cfg.seed},
        "cascade": cfg.cascade,
        "gpu_path": {"amp": cfg.amp, "compile": cfg.compile, "pinned_memory": _is_cuda(device),
                     "channels_last": _is_cuda(device)},
        "determinism": determinism_settings(), "start_time": _now(), "end_time": None,
    })
    return run


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def determinism_settings() -> Dict[str, Any]:
    """What decides whether a rerun reproduces the numbers bit for bit (for the manifest)."""
    import os

    return {
        "cell_seed": "int(sha256(model, attack, params, eps, points, seed)[:8], 16) XOR seed; shared by the threat models of an (attack, eps); one torch.Generator per attack",
        "global_rng": "never reseeded; model loading runs in a forked RNG state",
        "torch_threads": torch.get_num_threads(),  # every cell's (see torch_threads)
        "torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


_OUTPUTS = ("results.csv", "samples.csv", "timings.csv", "sanity.csv")


def _remove_leftovers(path: Path, replace: bool) -> None:
    """Temporary files and staged cells of a killed run; all outputs when replacing a configuration."""
    import shutil

    for folder in (path, path / "cells", path / "features", path / "checkpoints"):
        hidden = folder.glob(".*") if folder.is_dir() else []
        for item in hidden:
            if item.is_dir() and folder.name == "cells":
                shutil.rmtree(item, ignore_errors=True)
            elif item.is_file() and item.name.endswith(".tmp"):
                item.unlink(missing_ok=True)
    if replace:
        for name in _OUTPUTS:
            (path / name).unlink(missing_ok=True)
        shutil.rmtree(path / "features", ignore_errors=True)


def prune_cells(run, planned: set) -> None:
    """Remove finished cells this configuration does not plan (stale keys), so results.csv has only its own."""
    import os
    import shutil

    for cell_id in run.cell_ids():
        if cell_id not in planned:
            trash = run.cell_dir(cell_id).with_name(f".stale-{cell_id}")
            os.replace(run.cell_dir(cell_id), trash)  # out of sight at once, even if killed mid-removal
            shutil.rmtree(trash, ignore_errors=True)


def _load(path: str, arch: Optional[str], device):
    from robench.checkpoints import load_model
    from robench.devices import prefer_channels_last

    # Building the architecture draws its (discarded) initial weights from the global RNG.
    cuda = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        model = load_model(path, arch=arch, device=device)
    prefer_channels_last(model)  # on CUDA
    return model


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
    if model.device.type == "cuda":  # one asynchronous copy per batch (the test points stay on the host)
        x = x.pin_memory()
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
class Chain:
    """``--cascade``: the cells of one (eps, threat, detectors), run in attack order.

    Each attack runs only on the points the earlier ones left robust; a point
    already won keeps the example that won it. So the last cell's robust
    accuracy is the worst case over all attacks, at a fraction of the passes.
    """

    cells: List["Cell"]

    @property
    def cell_id(self) -> str:
        return self.cells[0].cell_id

    def output_ids(self) -> List[str]:
        return [i for cell in self.cells for i in cell.output_ids()]


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
    after: List[str] = field(default_factory=list)  # --cascade: the attacks run before this one

    def output_ids(self) -> List[str]:
        """The ids of the cells this attack run writes (one per detector)."""
        if len(self.detectors) == 1:
            return [self.cell_id]
        return [f"{self.cell_id}-{d}" for d in self.detectors]


def plan_cells(cfg: AttackConfig, ctx: ModelContext) -> List[Any]:
    """The grid's cells in order; with ``cfg.cascade``, grouped into :class:`Chain` s."""
    from robench import __version__
    from robench.specs import parse_spec

    cells, chains = [], {}
    index_digest = _points_digest(ctx)
    surrogate_sha = _sha(cfg.surrogate) if cfg.surrogate else None
    for spec in cfg.attacks:
        name, kwargs = parse_spec(spec)
        for eps in cfg.eps_for(spec):
            for threat in (ThreatModel.parse(t) for t in cfg.threats_for(spec)):
                groups = [[d] for d in ctx.detectors] if threat == ThreatModel.WHITE_BOX else [list(ctx.detectors)]
                for dets in groups:
                    chain = chains.setdefault((eps, threat, tuple(dets)), []) if cfg.cascade else []
                    after = [c.attack + _spec_suffix(c.kwargs) for c in chain]
                    key = {"model": ctx.sha256, "attack": name, "kwargs": kwargs, "eps": eps,
                           "threat": threat.value, "detectors": dets, "index": index_digest,
                           "dataset": ctx.dataset, "arch": cfg.arch, "batch_size": cfg.batch_size,
                           "device": ctx.model.device.type, "seed": cfg.seed,
                           "surrogate": surrogate_sha, "version": __version__}
                    if cfg.amp or cfg.compile:
                        key.update(amp=cfg.amp, compile=cfg.compile)
                    if cfg.cascade:
                        key["cascade_after"] = after
                    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
                    cell = Cell(digest[:16], name, kwargs, eps, threat, dets,
                                attack_seed(ctx, name, kwargs, eps, index_digest, cfg.seed), after)
                    chain.append(cell)
                    if not cfg.cascade:
                        cells.append(cell)
    return [Chain(c) for c in chains.values()] if cfg.cascade else cells


def _spec_suffix(kwargs: Dict[str, Any]) -> str:
    return (":" + ",".join(f"{k}={kwargs[k]}" for k in sorted(kwargs))) if kwargs else ""


def attack_seed(ctx: ModelContext, name: str, kwargs: Dict[str, Any], eps: float, index_digest: str,
                seed: int) -> int:
    """The attack generator's seed: the same for every threat model and detector of an
    (attack, eps), so the white-box attacker's ``ce`` candidate is exactly the gray-box
    example and white-box can never come out weaker than gray-box by chance."""
    key = json.dumps({"model": ctx.sha256, "attack": name, "kwargs": kwargs, "eps": eps,
                      "index": index_digest, "seed": seed}, sort_keys=True, default=str)
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) ^ seed


def _points_digest(ctx: ModelContext) -> str:
    """The test points' indices and bytes: a dataset file replaced on disk means new cells."""
    digest = hashlib.sha256()
    for tensor in (ctx.index, ctx.x, ctx.y):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _sha(path: str) -> str:
    from robench.checkpoints import file_sha256

    return file_sha256(path)


def run_cell(cell, ctx: ModelContext, surrogate, cfg: AttackConfig, quiet: bool):
    """Craft and evaluate one cell (or a cascade's chain); returns [(cell_id, row, samples,
    adv_features, x_adv)], one per detector (and per cell of a chain)."""
    with torch_threads(cfg.threads):
        if isinstance(cell, Chain):
            return _run_chain(cell, ctx, surrogate, cfg, quiet)
        return _run_cell(cell, ctx, surrogate, cfg, quiet)


def _run_cell(cell: Cell, ctx: ModelContext, surrogate, cfg: AttackConfig, quiet: bool):
    return _evaluate(cell, ctx, cfg, *_craft_cell(cell, ctx, surrogate, cfg, quiet))


def _craft_cell(cell: Cell, ctx: ModelContext, surrogate, cfg: AttackConfig, quiet: bool,
                active: Optional[torch.Tensor] = None):
    """(x_adv, passes, objective, objective_wins) of the cell's threat model."""
    from robench.evaluate import craft, white_box

    if cell.threat == ThreatModel.WHITE_BOX:
        return white_box(cell, ctx, cfg, quiet, active=active)
    source = surrogate if cell.threat == ThreatModel.BLACK_BOX else ctx.model
    x_adv, passes, objective = craft(cell, source, ctx.x, ctx.y, cfg, quiet, objective=None, active=active)
    return x_adv, passes, objective, ""


def _evaluate(cell: Cell, ctx: ModelContext, cfg: AttackConfig, x_adv: torch.Tensor, passes: int,
              objective: str, wins: str):
    from robench.evaluate import evaluate_cell

    results = []
    for det_name, sub_id in zip(cell.detectors, cell.output_ids()):
        row, samples, adv_f = evaluate_cell(cell, ctx, det_name, x_adv, cfg)
        row.update({"objective": objective, "passes_per_sample": round(passes / len(ctx.y), 2),
                    "objective_wins": wins, "cascade_after": ";".join(cell.after)})
        samples.insert(0, "cell_id", sub_id)
        results.append((sub_id, row, samples, adv_f, x_adv))
    return results


def attacker_rank(cell: Cell, ctx: ModelContext, x: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    """Per point, from the attacker's view: 2 won (misclassified; and, under white-box, not
    flagged by the cell's detector at the threshold the attacker evades), 1 misclassified
    but flagged, 0 still correct."""
    from robench.evaluate import FLAG_FPR
    from robench.threats import defender_outcome

    pred = ctx.model.predict(x, cfg.batch_size)
    flagged = torch.zeros(len(pred), dtype=torch.bool)
    detector = ctx.detectors.get(cell.detectors[0]) if cell.threat == ThreatModel.WHITE_BOX else None
    if detector is not None:
        flagged = detector.flag(detector.score(x, batch_size=cfg.batch_size), FLAG_FPR).cpu()
    return defender_outcome(pred == ctx.y, flagged)


def _run_chain(chain: Chain, ctx: ModelContext, surrogate, cfg: AttackConfig, quiet: bool):
    """The attacks of a chain in order, each on the points the ones before have not won.

    An attacked point takes the new example unless the one it had is worse for
    the defender (the per-point worst case, as in white-box); a won point keeps
    the example that won it. So robust accuracy never rises along the chain.
    A chain is recomputed whole when any of its cells is missing (they depend on
    each other); the driver does not rewrite the cells already on disk, which
    come out identical anyway since every attack's draws are seeded and row-aligned.
    """
    won = ctx.clean_pred != ctx.y  # misclassified when clean: nothing to attack
    x_best, rank = ctx.x, torch.zeros(len(ctx.y), dtype=torch.long)
    results = []
    for cell in chain.cells:
        active = ~won
        x_new, passes, objective, wins = _craft_cell(cell, ctx, surrogate, cfg, quiet, active=active)
        new_rank = attacker_rank(cell, ctx, x_new, cfg)
        take = active & (new_rank >= rank)
        x_best = torch.where(take.view(-1, *[1] * (x_new.dim() - 1)), x_new, x_best)
        rank = torch.where(take, new_rank, rank)
        won = won | (rank == 2)
        results += _evaluate(cell, ctx, cfg, x_best, passes, objective, wins)
    return results


# -- finishing ------------------------------------------------------------------------

def _finish_manifest(run, started: float, seeds: Dict[str, int], done: int, cached: int) -> None:
    _note_manifest(run, end_time=_now(), wall_seconds=round(time.time() - started, 1),
                   cells={"run": done, "cached": cached},
                   cell_seeds=dict(sorted(seeds.items())))  # what each cell's attack generator was seeded with


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
