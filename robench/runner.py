"""``robench attack``: the grid of (model, attack, eps, threat, detector) cells, as one straight line.

Load each model and its test points, fit and calibrate the detectors on
train/val, plan the cells (:mod:`robench.plan`), run the ones not yet on disk
through an executor (:mod:`robench.executors`, each job crafted and evaluated
by :func:`robench.evaluate.run_job`), write each into the run directory
(:class:`robench.rundir.RunDir`), then merge, add the worst case over the run's
attacks and the sanity report. The caller's global RNG is left as it was.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Union

import torch

from robench.config import RunConfig, run_identity
from robench.provenance import now
from robench.errors import UsageError
from robench.rundir import RunDir

SAVE_ADV_GB = 2.0  # default budget for stored adversarial examples (ROBENCH_SAVE_ADV_GB overrides)


@dataclass
class RunSummary:
    """What ``robench attack`` / ``run`` report at the end (as text, or as JSON with ``--json``)."""

    path: str
    results: Any  # pandas.DataFrame
    run: int
    cached: int
    seconds: float
    sanity: Any = None  # pandas.DataFrame or None

    def text(self) -> str:
        df = self.results
        cols = [c for c in ("model", "attack", "eps", "threat", "detector", "objective", "clean_acc",
                            "robust_acc", "det_robust_acc_fpr5", "auc") if c in df.columns]
        table = df[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}") if len(df) else "(no rows)"
        flags = ""
        if self.sanity is not None and len(self.sanity):
            bad = self.sanity[self.sanity["flagged"]]
            flags = "\n\nsanity: " + ("no flags" if bad.empty else "FLAGGED\n" + "\n".join(
                f"  {r.model}: {r.check}: {r.evidence}" for r in bad.itertuples()))
        return f"{table}{flags}\n\n{self.run} cells run, {self.cached} cached, {self.seconds:.0f} s -> {self.path}"

    def as_dict(self) -> Dict[str, Any]:
        from robench.io import to_jsonable

        rows = json.loads(self.results.to_json(orient="records")) if len(self.results) else []
        flagged = [] if self.sanity is None else self.sanity[self.sanity["flagged"]].to_dict("records")
        return to_jsonable({"run_dir": self.path, "cells_run": self.run, "cells_cached": self.cached,
                            "seconds": round(self.seconds, 1), "results": rows, "sanity_flags": flagged})


def run_attack(cfg: RunConfig, out: Union[str, RunDir], quiet: bool = False, force: bool = False) -> RunSummary:
    """Run every cell of ``cfg`` into the run directory ``out`` (a path, or a RunDir already open).

    Finished cells are reused, never recomputed; cells of an earlier configuration
    that this one does not plan are removed.
    """
    from robench.devices import deterministic, resolve_device, torch_threads
    from robench.validation import check

    check(cfg)
    cfg = cfg.replace(threads=cfg.threads or torch.get_num_threads())
    replacing = RunDir.check(out.path if isinstance(out, RunDir) else out, run_identity(cfg), force)
    with torch_threads(cfg.threads), deterministic(resolve_device(cfg.device)), _opened(out) as run:
        return _run_grid(cfg, run, replacing, quiet)


@contextmanager
def _opened(out: Union[str, RunDir]) -> Iterator[RunDir]:
    if isinstance(out, RunDir):  # a suite opened (and locked) it before training
        yield out
        return
    with RunDir.open(out, command="robench attack") as run:
        yield run


def _run_grid(cfg: RunConfig, run: RunDir, replacing: bool, quiet: bool) -> RunSummary:
    from robench.devices import resolve_device
    from robench.evaluate import run_job
    from robench.executors import Task, make_executor
    from robench.plan import cell_seeds, cells_of, plan_cells
    from robench.prepare import check_surrogate, clean_features, load_source, prepare_model, resolve_batch_size

    device = resolve_device(cfg.device)
    started = time.time()
    run.start(start_manifest(cfg, device), replacing)
    if cfg.batch_size == "auto":
        cfg = cfg.replace(batch_size=resolve_batch_size(cfg, device))
        run.update_manifest(batch_size=cfg.batch_size)
    surrogate = load_source(cfg.surrogate, cfg.arch, device) if cfg.surrogate else None
    contexts, tasks, seeds, cached, n_cells = {}, [], {}, 0, 0
    for path in cfg.models:
        ctx = contexts[path] = prepare_model(path, cfg, device)
        warn_if_weak(ctx.model)
        if surrogate is not None:
            check_surrogate(surrogate, ctx)
        run.write_features(ctx.name, clean_features(ctx, cfg.batch_size), ctx.y, ctx.clean_pred, ctx.index)
        for job in plan_cells(cfg, ctx.plan_key(surrogate.sha256 if surrogate else None)):
            seeds.update(cell_seeds([job]))
            n_cells += len(cells_of(job))
            if all(run.has_cell(i) for i in job.output_ids()):
                cached += 1
            else:
                tasks.append(Task(path, job))
    run.prune(set(seeds))
    save = save_adv_decision(cfg, contexts, n_cells)
    run.update_manifest(save_adv=save)
    done, halved = 0, {}
    executor = make_executor(cfg) if tasks else None
    for result in executor.run(run_job, tasks, contexts, surrogate, cfg, quiet) if executor else []:
        for cell in result.cells:
            if cell.halved:
                halved[cell.cell_id] = list(cell.halved)
            if cfg.cascade and run.has_cell(cell.cell_id):  # a resumed chain recomputes its finished cells
                continue
            run.write_cell(cell.cell_id, cell.row, cell.samples, cell.adv_features,
                           cell.x_adv if save else None, seconds=result.seconds)
        done += 1
    if halved:  # out of GPU memory: these cells ran (some of) their batches in halves
        run.update_manifest(oom_halved_batches=halved)
    return _finish(cfg, run, contexts, started, seeds, done, cached)


def _finish(cfg: RunConfig, run: RunDir, contexts: Dict[str, Any], started: float, seeds: Dict[str, int],
            done: int, cached: int) -> RunSummary:
    from robench.sanity import run_sanity

    results = run.finalize()
    sanity = run_sanity(run, cfg, contexts) if cfg.sanity else None
    run.update_manifest(end_time=now(), wall_seconds=round(time.time() - started, 1),
                        cells={"run": done, "cached": cached},
                        cell_seeds=dict(sorted(seeds.items())))  # what each cell's attack generator was seeded with
    return RunSummary(str(run.path), results, done, cached, time.time() - started, sanity)


def warn_if_weak(model: Any) -> None:
    """One warning line for a model that ended training near chance (its numbers mean nothing)."""
    from robench.progress import note
    from robench.training import weak_model_warning

    warning = weak_model_warning(model)
    if warning:
        note(f"Warning: {warning}")


def save_adv_decision(cfg: RunConfig, contexts: Dict[str, Any], n_cells: int) -> bool:
    """``--save-adv`` as given, else whether the run's adversarial examples fit the budget."""
    if cfg.save_adv is not None:
        return bool(cfg.save_adv)
    per_set = max((c.x.numel() * 4 for c in contexts.values()), default=0)
    need = per_set * n_cells / 1e9
    budget = float(os.environ.get("ROBENCH_SAVE_ADV_GB", SAVE_ADV_GB))
    if need <= budget:
        return True
    from robench.progress import note

    note(f"not storing adversarial examples: this run's would take up to {need:.1f} GB (more than "
         f"{budget:g} GB, set by ROBENCH_SAVE_ADV_GB); pass --save-adv to store them")
    return False


def start_manifest(cfg: RunConfig, device) -> Dict[str, Any]:
    """The manifest a (re)started run writes first; the end fields are added when it finishes."""
    from robench.provenance import collect_versions, git_hash

    cuda = device is not None and torch.device(device).type == "cuda"
    return {
        "config": run_identity(cfg), "versions": collect_versions(), "git": git_hash(),
        "device": str(device or cfg.device), "executor": cfg.executor, "seeds": {"seed": cfg.seed},
        "cascade": cfg.cascade,
        "gpu_path": {"amp": cfg.amp, "compile": cfg.compile, "pinned_memory": cuda, "channels_last": cuda},
        "determinism": determinism_settings(), "start_time": now(), "end_time": None,
    }


def determinism_settings() -> Dict[str, Any]:
    """What decides whether a rerun reproduces the numbers bit for bit (for the manifest)."""
    return {
        "cell_seed": "int(sha256(model, attack, params, eps, points, seed)[:8], 16) XOR seed; shared by the "
                     "threat models of an (attack, eps); one torch.Generator per attack",
        "global_rng": "never reseeded; model loading runs in a forked RNG state",
        "torch_threads": torch.get_num_threads(),  # every cell's (see devices.torch_threads)
        "torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def check_out(out: str, cfg: RunConfig, force: bool) -> None:
    """Refuse ``out`` before any work (a suite calls this before training)."""
    RunDir.check(out, run_identity(cfg), force)


__all__ = ["RunConfig", "RunSummary", "run_attack", "check_out", "UsageError"]
