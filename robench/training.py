"""Training a model with a registered defense (what ``robench train`` runs)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from robench.data import Dataset, load_dataset
from robench.devices import resolve_device
from robench.errors import UsageError
from robench.models import ModelInfo, RobustModel
from robench.progress import progress_bar
from robench.registry import registry


@dataclass
class TrainConfig:
    """Everything that decides a training run (recorded in the checkpoint)."""

    defense: str
    dataset: str
    arch: str = "small-cnn"
    epochs: Optional[int] = None  # None: the defense's / dataset's default
    seed: int = 0
    device: str = "auto"
    batch_size: int = 64
    lr: float = 1e-3
    feature_dim: Optional[int] = None
    train_half: Optional[str] = None
    defense_params: Dict[str, Any] = field(default_factory=dict)


def default_epochs(dataset: str) -> int:
    if dataset.startswith("cifar10"):
        return 100
    if dataset == "digits":
        return 30
    return 10


def build_defense(name: str, dataset: str, params: Dict[str, Any]):
    cls = registry("defenses").get(name)
    return cls(dataset=dataset, **params)


def train(cfg: TrainConfig, data: Optional[Dataset] = None, quiet: bool = False) -> RobustModel:
    """Train ``cfg.arch`` with ``cfg.defense`` on ``cfg.dataset`` and return the frozen model.

    The global RNG is left as it was: weights and batch order come from ``cfg.seed``
    inside a forked RNG state.
    """
    _validate(cfg)
    device = resolve_device(cfg.device)
    data = data or load_dataset(cfg.dataset, seed=cfg.seed, train_half=cfg.train_half)
    defense = build_defense(cfg.defense, cfg.dataset, cfg.defense_params)
    epochs = cfg.epochs or default_epochs(cfg.dataset)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        model = _build(cfg, data, defense).to(device)
        extra = defense.setup(model, data.num_classes, data.input_shape)
        for module in extra:
            module.to(device)
        t0 = time.perf_counter()
        _fit(model, extra, defense, data, cfg, epochs, device, quiet)
        seconds = time.perf_counter() - t0
    model.freeze()
    val_acc = accuracy(model, *data.split("val"))
    floor = clean_acc_floor(data.num_classes, defense)
    model.info.metrics = {
        "clean_val_acc": val_acc,
        "clean_test_acc": accuracy(model, *data.split("test")),
        "train_seconds": round(seconds, 1), "epochs": epochs,
        "clean_acc_floor": floor,
        "near_chance": not val_acc >= floor,  # NaN (no validation points) counts as failed
    }
    return model


def clean_acc_floor(num_classes: int, defense: Any = None) -> float:
    """The clean validation accuracy a trained model must reach: 2x chance, or the defense's ``min_clean_acc``.

    Below it the model has not learned the task, and every robustness number
    measured on it (robust accuracy, detection rates) describes noise.
    """
    stated = float(getattr(defense, "min_clean_acc", 0.0) or 0.0)
    return round(max(2.0 / max(1, num_classes), stated), 4)


def weak_model_warning(model: RobustModel) -> Optional[str]:
    """One line saying that ``model`` ended training near chance, or None when it did not (or nobody knows).

    Reads the checkpoint's training metrics: ``near_chance`` where training
    recorded it, else ``clean_val_acc`` against 2x chance (older checkpoints).
    Checkpoints without a clean validation accuracy (the official GM-Loss
    code's) give None.
    """
    info = model.info
    metrics = info.metrics or {}
    acc = metrics.get("clean_val_acc")
    if not isinstance(acc, (int, float)) or isinstance(acc, bool):
        return None
    floor = metrics.get("clean_acc_floor", clean_acc_floor(info.num_classes))
    near = metrics.get("near_chance")
    if not (near if isinstance(near, bool) else not acc >= floor):
        return None
    label = info.name or f"{info.defense}/{info.arch}"
    return (f"model '{label}' is near chance: clean validation accuracy {acc:.4f} is below {floor:.4f} "
            f"(2x chance for {info.num_classes} classes, or the defense's floor); "
            f"every robustness number measured on it is meaningless")


def _validate(cfg: TrainConfig) -> None:
    if cfg.epochs is not None and cfg.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {cfg.epochs}")
    if cfg.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if not (cfg.lr > 0 and math.isfinite(cfg.lr)):
        raise UsageError(f"--lr must be a positive number, got {cfg.lr}")
    if cfg.feature_dim is not None and cfg.feature_dim < 1:
        raise UsageError(f"--feature-dim must be >= 1, got {cfg.feature_dim}")


def _build(cfg: TrainConfig, data: Dataset, defense) -> RobustModel:
    arch_cls = registry("archs").get(cfg.arch)
    c, h, _ = data.input_shape
    kwargs = {"num_classes": data.num_classes, "feature_dim": cfg.feature_dim or arch_cls.default_feature_dim,
              "head": defense.head, "in_channels": c, "input_size": h}
    net = arch_cls(**kwargs)
    info = ModelInfo(arch=cfg.arch, arch_kwargs=kwargs, defense=cfg.defense,
                     defense_params=dict(defense.params), dataset=cfg.dataset,
                     num_classes=data.num_classes, feature_dim=kwargs["feature_dim"],
                     input_shape=data.input_shape, mean=data.mean, std=data.std,
                     split={**data.split_record(), "train_half": cfg.train_half})
    return RobustModel(net, info)


def _fit(model: RobustModel, extra, defense, data: Dataset, cfg: TrainConfig,
         epochs: int, device: torch.device, quiet: bool) -> None:
    x, y = data.split("train")
    opt = torch.optim.Adam(param_groups(model, extra, defense, cfg.lr), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups], total_steps=epochs * steps_per_epoch,
                                                pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = progress_bar(total=epochs * steps_per_epoch, desc=f"train {cfg.defense}", unit="batch",
                       disable=quiet)
    model.train()
    for m in extra:
        m.train()
    for epoch in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for i, idx in enumerate(order.split(cfg.batch_size)):
            xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
            loss, logs = defense.loss(model, xb, yb, epoch + i / steps_per_epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()}, refresh=False)
    bar.close()


def param_groups(model: RobustModel, extra, defense, lr: float):
    """Parameters to optimise; a defense may give its head a larger step (``head_lr_mult``).

    The GM means start small (kaiming init, norm about 0.8) and must move far to
    separate the classes: with one Adam step size for everything they barely
    leave their initial place in a short run, and the classes stay crowded.
    """
    mult = float(getattr(defense, "params", {}).get("head_lr_mult", 1.0))
    head = list(model.net.classifier.parameters())
    head_ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in head_ids]
    rest += [p for m in extra for p in m.parameters()]
    return [{"params": rest, "lr": lr}, {"params": head, "lr": lr * mult}]


@torch.no_grad()
def accuracy(model: RobustModel, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    was_training = model.training
    model.eval()
    pred = model.predict(x, batch_size)
    model.train(was_training)
    return round(float((pred == y).float().mean()), 4) if len(y) else float("nan")
