"""Preparing a run's models: load each checkpoint, its test points and its fitted detectors, once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from robench.config import RunConfig
from robench.errors import UsageError
from robench.plan import PlanKey, points_digest


@dataclass
class ModelContext:
    """A loaded model with its test points and fitted detectors (what a cell needs)."""

    path: str
    model: Any
    sha256: str
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    clean_pred: torch.Tensor
    detectors: Dict[str, Any]
    dataset: str
    points: str  # digest of index, x, y

    @property
    def name(self) -> str:
        return self.model.info.name

    def plan_key(self, surrogate_sha: Optional[str] = None) -> PlanKey:
        return PlanKey(self.sha256, self.points, self.dataset, self.model.device.type, list(self.detectors),
                       surrogate_sha)


@dataclass
class Source:
    """A model an attacker crafts on, with the sha256 of its checkpoint (the craft cache's key)."""

    model: Any
    sha256: str


def load_for_run(path: str, arch: Optional[str], device) -> Any:
    """A checkpoint as a RobustModel on ``device``, without touching the global RNG."""
    from robench.checkpoints import load_model
    from robench.devices import prefer_channels_last

    # Building the architecture draws its (discarded) initial weights from the global RNG.
    cuda = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        model = load_model(path, arch=arch, device=device)
    prefer_channels_last(model)  # on CUDA
    return model


def load_source(path: str, arch: Optional[str], device) -> Source:
    from robench.checkpoints import file_sha256

    return Source(load_for_run(path, arch, device), file_sha256(path))


def prepare_model(path: str, cfg: RunConfig, device) -> ModelContext:
    """Load ``path``, its dataset's first ``cfg.n`` test points and the run's detectors."""
    from robench.checkpoints import file_sha256
    from robench.data import load_dataset

    model = load_for_run(path, cfg.arch, device)
    spec = cfg.dataset or model.info.dataset
    if spec in ("mnist", "cifar10"):
        raise UsageError(f"checkpoint {path} (official GM-Loss) does not say where its data is: "
                         f"pass --dataset {spec}:PATH")
    data = load_dataset(spec, seed=int(model.info.split.get("seed", cfg.seed)),
                        train_half=model.info.split.get("train_half"))
    check_compatible(model, data, path)
    x, y = data.split("test", cfg.n)
    index = data.indices("test", cfg.n)
    digest = points_digest(index, x, y)
    if model.device.type == "cuda":  # one asynchronous copy per batch (the test points stay on the host)
        x = x.pin_memory()
    clean_pred = model.predict(x, cfg.batch_size)
    detectors = fit_detectors(model, data, cfg)
    return ModelContext(path, model, file_sha256(path), x, y, index, clean_pred, detectors, spec, digest)


def check_compatible(model, data, path: str) -> None:
    if tuple(model.info.input_shape) != tuple(data.input_shape):
        raise UsageError(f"checkpoint {path} expects inputs {tuple(model.info.input_shape)} "
                         f"but dataset {data.spec} has {tuple(data.input_shape)}")
    if model.num_classes != data.num_classes:
        raise UsageError(f"checkpoint {path} has {model.num_classes} classes but dataset "
                         f"{data.spec} has {data.num_classes}")


def check_surrogate(surrogate: Source, ctx: ModelContext) -> None:
    model = surrogate.model
    if tuple(model.info.input_shape) != tuple(ctx.model.info.input_shape) or \
            model.num_classes != ctx.model.num_classes:
        raise UsageError(
            f"--surrogate {model.info.name}: inputs {tuple(model.info.input_shape)} with "
            f"{model.num_classes} classes do not match the target's "
            f"{tuple(ctx.model.info.input_shape)} with {ctx.model.num_classes} classes")


def fit_detectors(model, data, cfg: RunConfig) -> Dict[str, Any]:
    """Each detector of the run, fitted on the train split and calibrated on clean validation points."""
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


def clean_features(ctx: ModelContext, batch_size: int) -> torch.Tensor:
    from robench.models import batched

    with torch.no_grad():
        return batched(ctx.model.features, ctx.x, batch_size, ctx.model.device)


def resolve_batch_size(cfg: RunConfig, device) -> int:
    """``auto``: the largest batch every model's attack step fits (the smallest over the models)."""
    from robench.batching import auto_batch_size

    sizes: List[int] = []
    for path in cfg.models + ([cfg.surrogate] if cfg.surrogate else []):
        model = load_for_run(path, cfg.arch, device)
        sizes.append(auto_batch_size(model, model.info.input_shape, cfg.n))
        del model
    return min(sizes)
