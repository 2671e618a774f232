"""Functions behind the CLI commands that are not big enough for a module of their own."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import click

from robench.errors import UsageError


def check_writable_file(out: str) -> Path:
    """Fail early (before hours of work) when ``out`` cannot be written."""
    path = Path(out)
    if path.is_dir():
        raise UsageError(f"--out {out}: is a folder, expected a file name")
    _check_can_create(out, path.parent if str(path.parent) else Path("."))
    return path


def check_writable_dir(out: str) -> Path:
    """Fail early when the folder ``out`` cannot be created or written (touches nothing)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    _check_can_create(out, path)
    return path


def _check_can_create(out: str, folder: Path) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--out {out}: {existing} is a file, not a folder")
    try:  # os.access says yes to root even on read-only or special file systems: really try
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UsageError(f"--out {out}: folder {existing} is not writable ({exc.strerror or exc})") from None


@contextmanager
def keep_only_finished(out: Optional[str], own_folder: bool = True) -> Iterator[None]:
    """On any failure or interrupt, remove what this command created under ``out``, unless it holds finished work.

    Finished work is a cell folder with its ``row.json`` or a trained checkpoint:
    those stay (a rerun resumes from them). Everything else this invocation
    created (the folder itself, a manifest, empty ``cells/``) is removed, so a
    mistake leaves no half-written output behind. Entries that were there before
    are never touched.

    Args:
        out: the command's output folder.
        own_folder: whether only this command writes into ``out`` when it already
            exists (a run directory: yes; the folder a checkpoint goes into: no,
            so there only a folder this command created is removed).
    """
    if not out:
        yield
        return
    path = Path(out)
    top = _topmost_missing(path)
    before = {p.name for p in path.iterdir()} if own_folder and top is None and path.is_dir() else None
    try:
        yield
    except BaseException:
        if top is not None and top.exists() and not _holds_finished_work(top):
            shutil.rmtree(top, ignore_errors=True)
        elif before is not None and path.is_dir() and not _holds_finished_work(path):
            for new in (p for p in path.iterdir() if p.name not in before):
                if new.is_dir():
                    shutil.rmtree(new, ignore_errors=True)
                else:
                    new.unlink(missing_ok=True)
        raise


def suite_out(suite: str, out: Optional[str]) -> Optional[str]:
    """The run folder ``robench run`` writes: ``--out``, else the suite's ``out:``, else runs/<stem>.

    None when the suite file cannot be read (``run_suite`` reports why).
    """
    if out:
        return out
    try:
        import yaml

        data = yaml.safe_load(Path(suite).read_text(encoding="utf-8"))
    except Exception:
        return None
    named = data.get("out") if isinstance(data, dict) else None
    return named if isinstance(named, str) and named else str(Path("runs") / Path(suite).stem)


def _topmost_missing(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` that does not exist yet (what a command would create)."""
    top = None
    for p in [path, *path.parents]:
        if p.exists():
            break
        top = p
    return top


def _holds_finished_work(path: Path) -> bool:
    def visible(p: Path) -> bool:
        return not any(part.startswith(".") for part in p.relative_to(path).parts)

    return any(visible(p) for pattern in ("cells/*/row.json", "**/*.pt") for p in path.glob(pattern))


def run_train(*, defense: str, dataset: str, arch: str, epochs: Optional[int], batch_size: int,
              lr: float, feature_dim: Optional[int], train_half: Optional[str], seed: int, device: str,
              quiet: bool, out: str, allow_weak: bool = False) -> Path:
    """Train, write the checkpoint and print its summary line.

    A model that ends near chance (see :func:`robench.training.weak_model_warning`)
    is still written, with ``near_chance: true`` in its metrics, and a warning
    line follows the summary; unless ``allow_weak``, the command then exits 1
    so that scripts do not go on to benchmark it.
    """
    from robench.checkpoints import save_checkpoint
    from robench.data import load_dataset
    from robench.registry import registry
    from robench.specs import parse_spec
    from robench.training import TrainConfig, build_defense, train, weak_model_warning

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
    warning = weak_model_warning(model)
    if warning:
        action = "kept because of --allow-weak" if allow_weak else "written, but exiting 1 (--allow-weak accepts it)"
        click.echo(f"Warning: {warning}; checkpoint {action}", err=True)
        if not allow_weak:
            raise SystemExit(1)  # not click's Exit: the group runs Click non-standalone, which returns it
    return path


def listing(kind: str, pattern: Optional[str]) -> List[Dict[str, str]]:
    """``robench list KIND [PATTERN]``: registered names (attack families expanded), fnmatch-filtered."""
    import fnmatch

    from robench.registry import registry

    entries = [e.as_dict() for e in registry(kind).entries()]
    if kind == "attacks":
        from robench.attacks import expand_families

        from robench.presets import PRESETS

        by_name = {e["name"]: e for e in entries}
        entries = [{**by_name[name.partition(":")[0] if ":" in name else name], "name": name}
                   for name in expand_families(list(by_name))]
        entries += [{"name": p.name, "target": "robench.presets", "provider": "robench (preset)"}
                    for p in PRESETS.values()]
    return [e for e in entries if not pattern or fnmatch.fnmatch(e["name"], pattern)]


def report_summary(index: Path) -> Dict[str, Any]:
    """``robench report --json``: where the report is, what it holds, and its headline table."""
    import json

    import pandas as pd

    folder = Path(index).parent
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    headline = folder / "headline.csv"
    rows = json.loads(pd.read_csv(headline).to_json(orient="records")) if headline.is_file() else []
    return {"index": str(index), "folder": str(folder), "files": files, "headline": rows}
