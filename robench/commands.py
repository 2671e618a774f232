"""Functions behind the CLI commands that are not big enough for a module of their own."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import click

from robench.errors import UsageError


def check_writable_file(out: str) -> Path:
    """Fail early (before hours of work) when ``out`` cannot be written."""
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {out}: is a folder, expected a file name")
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: folder {existing} is not writable")
    return path


def run_train(*, defense: str, dataset: str, arch: str, epochs: Optional[int], batch_size: int,
              lr: float, feature_dim: Optional[int], train_half: Optional[str], seed: int, device: str,
              quiet: bool, out: str) -> Path:
    from robench.checkpoints import save_checkpoint
    from robench.data import load_dataset
    from robench.registry import registry
    from robench.specs import parse_spec
    from robench.training import TrainConfig, build_defense, train

    path = check_writable_file(out)
    name, params = parse_spec(defense)
    registry("archs").entry(arch)  # unknown arch: fail before loading data
    build_defense(name, dataset, params)  # unknown defense / parameter: fail early
    cfg = TrainConfig(defense=name, dataset=dataset, arch=arch, epochs=epochs, seed=seed, device=device,
                      batch_size=batch_size, lr=lr, feature_dim=feature_dim, train_half=train_half,
                      defense_params=params)
    data = load_dataset(dataset, seed=seed, train_half=train_half)
    model = train(cfg, data=data, quiet=quiet)
    save_checkpoint(model, path)
    m = model.info.metrics
    click.echo(f"{name} on {dataset} ({arch}): clean test accuracy {m['clean_test_acc']:.4f} "
               f"(val {m['clean_val_acc']:.4f}), {m['epochs']} epochs in {m['train_seconds']:.0f} s -> {path}")
    return path
