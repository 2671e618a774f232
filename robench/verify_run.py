"""``robench verify``: exact robustness (MILP) and certified bounds (CROWN, IBP) as run-directory cells.

A verify cell is one (model, eps, method, detector): per point the status
(robust / not robust / unknown / counterexample rejected), the proven bounds on
the margin and the solver time. Cells go into the same run directory as attack
cells (``robench attack`` and ``robench verify`` may share one ``--out``; each
command prunes only its own cells), are cached by content and resumed like
attack cells, and a point found non-robust starts the solver from the
adversarial example an attack of the run already stored for it.
:func:`robench.gap.add_verification_gap` then puts the interval next to every
worst-case attack row.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from robench.config import VerifyRunConfig
from robench.schema import VERIFY, WORST_CASE

PREFIX = "verify-"  # verify cells' ids; robench attack leaves them alone when it prunes
FLAG_FPR = 0.05  # the detection-aware question is asked at the 5%-FPR threshold, as the attacks use


def prefix(cfg: VerifyRunConfig) -> str:
    """The cell ids of one method: exact and crown cells live side by side in one run directory."""
    return f"{PREFIX}{cfg.method}-"


def manifest_key(cfg: VerifyRunConfig) -> str:
    return f"verify_config_{cfg.method}"


def identity(cfg: VerifyRunConfig) -> Dict[str, Any]:
    from dataclasses import asdict

    from robench.io import to_jsonable

    return json.loads(json.dumps(to_jsonable({"command": "verify", **asdict(cfg)}), sort_keys=True))


@dataclass(frozen=True)
class VerifyCell:
    cell_id: str
    eps: float
    detector: str  # "none" or "gm-likelihood"


def plan(cfg: VerifyRunConfig, ctx: Any) -> List[VerifyCell]:
    """One cell per (eps, detector question) for one prepared model."""
    from robench import __version__

    questions = ["none"]
    if "gm-likelihood" in cfg.detectors or ("auto" in cfg.detectors and ctx.model.is_gm):
        questions.append("gm-likelihood")
    if "none" in cfg.detectors and len(cfg.detectors) == 1:
        questions = ["none"]
    cells = []
    for eps in cfg.eps:
        for det in questions:
            key = {"model": ctx.sha256, "points": ctx.points, "eps": eps, "method": cfg.method, "detector": det,
                   "time_limit": cfg.time_limit if cfg.method == "exact" else None, "solver": cfg.solver,
                   "version": __version__}
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            cells.append(VerifyCell(prefix(cfg) + digest, eps, det))
    return cells


def run_verify(cfg: VerifyRunConfig, out: str, quiet: bool = False, force: bool = False):
    """Verify every (model, eps, question) of ``cfg`` into the run directory ``out``; returns a summary."""
    from robench.devices import resolve_device
    from robench.rundir import RunDir
    from robench.provenance import now
    from robench.runner import RunSummary
    from robench.validation import check

    check(cfg)
    started = time.time()
    replacing = RunDir.check(out, identity(cfg), force, key=manifest_key(cfg))
    with RunDir.open(out, command="robench verify") as run:
        run.start_command(manifest_key(cfg), identity(cfg), replacing)
        done, cached, planned = 0, 0, set()
        for path in cfg.models:
            ctx = _prepare(path, cfg, resolve_device("cpu"))
            run.write_features(ctx.name, *_clean(ctx, cfg))
            for cell in plan(cfg, ctx):
                planned.add(cell.cell_id)
                if run.has_cell(cell.cell_id):
                    cached += 1
                    continue
                t0 = time.time()
                row, samples, examples = verify_cell(cell, ctx, cfg, run, quiet)
                run.write_cell(cell.cell_id, row, samples, None, examples, seconds=time.time() - t0)
                done += 1
        run.prune(planned, prefix=prefix(cfg))
        results = run.finalize()
        run.update_manifest(**{f"{manifest_key(cfg)}_end": {"time": now(), "cells_run": done, "cells_cached": cached}})
    rows = results[(results["attack"] == VERIFY) & (results["objective"] == cfg.method)]
    return RunSummary(str(run.path), rows, done, cached, time.time() - started)


def _prepare(path: str, cfg: VerifyRunConfig, device) -> Any:
    from robench.config import RunConfig
    from robench.prepare import prepare_model
    from robench.verify import check_supported

    dets = ["gm-likelihood"] if ("gm-likelihood" in cfg.detectors or "auto" in cfg.detectors) else ["none"]
    ctx = prepare_model(path, RunConfig(models=[path], attacks=["fgsm"], eps=[0.0], dataset=cfg.dataset,
                                        arch=cfg.arch, n=cfg.n, batch_size=cfg.batch_size, seed=cfg.seed,
                                        device="cpu", detectors=dets if _gm(path, cfg) else ["none"]), device)
    check_supported(ctx.model, cfg.method, None)  # one line, before any work, for an unsupported layer
    if cfg.method == "exact" and cfg.solver == "scip":
        from robench.verify.solvers import import_solver

        import_solver("scip")  # likewise for the solver asked for
    return ctx


def _gm(path: str, cfg: VerifyRunConfig) -> bool:
    from robench.checkpoints import describe

    return describe(path, arch=cfg.arch).get("head") == "gm"


def _clean(ctx: Any, cfg: VerifyRunConfig):
    from robench.prepare import clean_features

    return clean_features(ctx, cfg.batch_size), ctx.y, ctx.clean_pred, ctx.index


def verify_cell(cell: VerifyCell, ctx: Any, cfg: VerifyRunConfig, run: Any, quiet: bool):
    """(row, samples, counterexamples) of one verify cell."""
    from robench.verify import verify_points

    detector = ctx.detectors.get("gm-likelihood") if cell.detector == "gm-likelihood" else None
    threshold = float(detector.threshold(FLAG_FPR)) if detector is not None else None
    starts = warm_starts(run, ctx, cell.eps)
    results = verify_points(ctx.model, ctx.x, ctx.y, cell.eps, method=cfg.method, threshold=threshold,
                            time_limit=cfg.time_limit, x_start=starts, solver=cfg.solver, progress=not quiet,
                            workers=cfg.solver_workers)
    examples = ctx.x.clone()
    for i, r in enumerate(results):
        if r.counterexample is not None and r.status == "not-robust":
            examples[i] = r.counterexample.to(examples.dtype)
    return verify_row(cell, ctx, cfg, results), verify_samples(cell, ctx, results, examples), examples


def warm_starts(run: Any, ctx: Any, eps: float) -> Optional[torch.Tensor]:
    """Per point, an adversarial example an attack cell of this run stored at ``eps`` (misclassified
    ones first); None when the run has none."""
    import pandas as pd

    cells = run.cells()
    if cells.empty:
        return None
    mine = cells[(cells["model"] == ctx.name) & (pd.to_numeric(cells["eps"]) == eps)
                 & ~cells["attack"].isin([VERIFY, WORST_CASE])]
    starts, found = ctx.x.clone(), torch.zeros(len(ctx.y), dtype=torch.bool)
    for cell_id in mine["cell_id"]:
        x_adv = run.x_adv(cell_id)
        if x_adv is None or x_adv.shape != tuple(ctx.x.shape):
            continue
        samples = run.samples(cell_id)
        if not np.array_equal(samples["index"].to_numpy(), ctx.index.numpy()):
            continue
        wrong = torch.from_numpy((samples["adv_pred"] != samples["label"]).to_numpy().copy()) & ~found
        starts[wrong] = torch.from_numpy(x_adv.copy())[wrong].to(starts.dtype)
        found |= wrong
    return starts if bool(found.any()) else None


def verify_row(cell: VerifyCell, ctx: Any, cfg: VerifyRunConfig, results: List[Any]) -> Dict[str, Any]:
    status = np.array([r.status for r in results])
    robust = status == "robust"
    rng = np.random.default_rng(cfg.seed)
    lo, hi = _fraction_interval(robust, rng)
    seconds = np.array([r.seconds for r in results])
    info = ctx.model.info
    column = "robust_acc" if cell.detector == "none" else "det_robust_acc_fpr5"
    row: Dict[str, Any] = {
        "model": info.name, "defense": info.defense, "dataset": ctx.dataset, "arch": info.arch,
        "attack": VERIFY, "attack_params": f"method={cfg.method}" + (
            f",time_limit={cfg.time_limit:g}" if cfg.method == "exact" else ""),
        "norm": "Linf", "eps": cell.eps, "threat": "white-box", "objective": cfg.method,
        "detector": cell.detector, "seed": cfg.seed, "n": len(results),
        "clean_acc": float((ctx.clean_pred == ctx.y).double().mean()), column: float(robust.mean()),
        "n_robust": int(robust.sum()), "n_not_robust": int((status == "not-robust").sum()),
        "n_unknown": int((status == "unknown").sum()), "n_rejected": int((status == "counterexample-rejected").sum()),
        "verify_median_seconds": float(np.median(seconds)) if len(seconds) else math.nan,
        "verify_max_seconds": float(seconds.max()) if len(seconds) else math.nan,
    }
    if cell.detector == "none":
        row.update(robust_acc_lo=lo, robust_acc_hi=hi)
    return row


def _fraction_interval(mask: np.ndarray, rng: np.random.Generator):
    from robench.metrics import bootstrap_counts

    counts = bootstrap_counts(len(mask), 200, rng)
    if not len(counts):
        return math.nan, math.nan
    values = counts @ mask / max(len(mask), 1)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def verify_samples(cell: VerifyCell, ctx: Any, results: List[Any], examples: torch.Tensor):
    import pandas as pd

    from robench.evaluate import input_hashes

    delta = (examples - ctx.x).flatten(1)
    pred = [r.recheck_pred if r.status == "not-robust" and r.recheck_pred is not None else int(c)
            for r, c in zip(results, ctx.clean_pred)]
    return pd.DataFrame({
        "model": ctx.name, "attack": VERIFY, "eps": cell.eps, "threat": "white-box", "detector": cell.detector,
        "index": ctx.index.numpy(), "input_sha1": input_hashes(ctx.x), "label": ctx.y.numpy(),
        "clean_pred": ctx.clean_pred.numpy(), "adv_pred": np.array(pred, dtype=np.int64),
        "clean_score": np.nan, "adv_score": np.nan, "linf": delta.abs().amax(1).numpy(),
        "l2": delta.norm(dim=1).numpy(), "success": [r.status == "not-robust" for r in results],
        "flagged_fpr1": False, "flagged_fpr5": False,
        "verify_status": [r.status for r in results], "margin_lower": [r.margin_lower for r in results],
        "margin_upper": [r.margin_upper for r in results], "verify_seconds": [r.seconds for r in results],
    })
