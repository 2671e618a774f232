"""Turning crafted examples into result rows, and the task every executor runs.

:func:`run_job` is the one function a cell (or a cascade's chain) needs: craft
under its threat model, then evaluate for each of its detectors. Executors run
it here or in Ray tasks; it depends only on its arguments.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from robench.config import RunConfig
from robench.craft import CraftCache, Crafted, chain_examples, craft, craft_cell
from robench.plan import Cell, Chain, Job
from robench.prepare import ModelContext, Source
from robench.presets import spec_norm
from robench.threats import Candidate


@dataclass
class CellResult:
    """One finished cell: its results row, per-sample records and arrays."""

    cell_id: str
    row: Dict[str, Any]
    samples: Any  # pandas.DataFrame, SAMPLE_COLUMNS
    adv_features: np.ndarray
    x_adv: torch.Tensor
    halved: tuple = ()  # batch sizes split in two after running out of GPU memory


@dataclass
class JobResult:
    """What one job (a cell or a chain) returns to the driver."""

    cells: List[CellResult]
    seconds: float


def run_job(job: Job, ctx: ModelContext, surrogate: Optional[Source], cfg: RunConfig, quiet: bool,
            cache: Optional[CraftCache] = None) -> JobResult:
    """Craft and evaluate one cell, or a cascade's chain, with the run's thread count."""
    from robench.devices import torch_threads

    cache = cache if cache is not None else CraftCache()
    started = time.perf_counter()
    with torch_threads(cfg.threads):
        if isinstance(job, Chain):
            made = chain_examples(job.cells, ctx, surrogate, cfg, cache, quiet)
            cells = [r for cell, m in zip(job.cells, made) for r in evaluate(cell, ctx, cfg, m)]
        else:
            cells = evaluate(job, ctx, cfg, craft_cell(job, ctx, surrogate, cfg, cache, quiet))
    return JobResult(cells, time.perf_counter() - started)


def evaluate(cell: Cell, ctx: ModelContext, cfg: RunConfig, made: Crafted) -> List[CellResult]:
    """One result per detector of the cell, from the same examples."""
    out = []
    for det_name, cell_id in zip(cell.detectors, cell.output_ids()):
        row, samples, adv_f = evaluate_cell(cell, ctx, det_name, made.x_adv, cfg)
        row.update({"objective": made.objective, "passes_per_sample": round(made.passes / len(ctx.y), 2),
                    "objective_wins": made.objective_wins, "cascade_after": ";".join(cell.after)})
        samples.insert(0, "cell_id", cell_id)
        out.append(CellResult(cell_id, row, samples, adv_f, made.x_adv, made.halved))
    return out


def evaluate_cell(cell: Cell, ctx: ModelContext, det_name: str, x_adv: torch.Tensor, cfg: RunConfig):
    """Predictions, scores and metrics of one cell for one detector: (row, samples, adv_features)."""
    import pandas as pd

    from robench.metrics import cell_metrics
    from robench.models import batched

    model = ctx.model
    with torch.no_grad():
        adv_f = batched(model.features, x_adv, cfg.batch_size, model.device)
        adv_pred = batched(model.logits_from_features, adv_f, cfg.batch_size, model.device).argmax(1)
    detector = ctx.detectors.get(det_name)
    clean_score = adv_score = None
    thresholds: Dict[float, float] = {}
    if detector is not None:
        clean_score = detector.score(ctx.x, batch_size=cfg.batch_size)
        adv_score = detector.score(x_adv, batch_size=cfg.batch_size)
        thresholds = {fpr: detector.threshold(fpr) for fpr in (0.01, 0.05)}
    delta = (x_adv - ctx.x).flatten(1)
    linf, l2 = delta.abs().amax(1), delta.norm(dim=1)
    metrics = cell_metrics(y=ctx.y.numpy(), clean_pred=ctx.clean_pred.numpy(), adv_pred=adv_pred.numpy(),
                           clean_score=_np(clean_score), adv_score=_np(adv_score), thresholds=thresholds,
                           linf=linf.numpy(), l2=l2.numpy(), seed=cfg.seed)
    info = model.info
    row: Dict[str, Any] = {
        "model": info.name, "defense": info.defense, "dataset": ctx.dataset, "arch": info.arch,
        "attack": cell.attack, "attack_params": _params(cell.kwargs), "norm": spec_norm(cell.attack, cell.kwargs),
        "eps": cell.eps, "threat": cell.threat.value, "detector": det_name, "seed": cfg.seed, **metrics,
    }
    samples = pd.DataFrame({
        "model": info.name, "attack": cell.attack, "eps": cell.eps, "threat": cell.threat.value,
        "detector": det_name, "index": ctx.index.numpy(), "input_sha1": input_hashes(ctx.x),
        "label": ctx.y.numpy(), "clean_pred": ctx.clean_pred.numpy(), "adv_pred": adv_pred.numpy(),
        "clean_score": _np(clean_score) if clean_score is not None else np.nan,
        "adv_score": _np(adv_score) if adv_score is not None else np.nan,
        "linf": linf.numpy(), "l2": l2.numpy(),
        "success": (ctx.clean_pred == ctx.y).numpy() & (adv_pred != ctx.y).numpy(),
        "flagged_fpr1": _flags(detector, adv_score, 0.01, len(adv_pred)),
        "flagged_fpr5": _flags(detector, adv_score, 0.05, len(adv_pred)),
    })
    return row, samples, adv_f.numpy()


def _np(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().cpu().double().numpy()


def _flags(detector, score, fpr: float, n: int) -> np.ndarray:
    if detector is None:
        return np.zeros(n, dtype=bool)
    return detector.flag(score, fpr).numpy().astype(bool)


def _params(kwargs: Dict[str, Any]) -> str:
    return ",".join(f"{k}={kwargs[k]}" for k in sorted(kwargs))


def input_hashes(x: torch.Tensor) -> List[str]:
    """A short content hash per input image (so samples can be matched across runs)."""
    arr = x.detach().cpu().numpy()
    return [hashlib.sha1(a.tobytes()).hexdigest()[:12] for a in arr]


AMP_TOLERANCE = 0.005  # robust accuracy under bf16 autocast within 0.5 points of fp32


def amp_agreement(cell: Cell, ctx: ModelContext, cfg: RunConfig) -> Dict[str, Any]:
    """Robust accuracy of one cell's attack crafted in fp32 and under ``cfg.amp``, on the same points.

    A sanity row: bf16 gradients are coarser, and an attack weakened by them
    would overstate robustness.
    """
    plain = replace(cfg, cascade=False)
    accs = {}
    for label, run_cfg in (("fp32", replace(plain, amp=None)), (cfg.amp, plain)):
        base = Candidate("default", cell.attack, dict(cell.kwargs))
        made = craft(cell, base, Source(ctx.model, ctx.sha256), ctx, run_cfg, CraftCache(), True)
        accs[label] = float((ctx.model.predict(made.x_adv, cfg.batch_size) == ctx.y).float().mean())
    diff = abs(accs[cfg.amp] - accs["fp32"])
    return {"model": ctx.name, "check": f"{cfg.amp} autocast agrees with fp32",
            "flagged": diff > AMP_TOLERANCE + 1e-12,
            "evidence": f"{cell.attack} eps {cell.eps:g}: robust accuracy {cfg.amp} {accs[cfg.amp]:.3f} vs "
                        f"fp32 {accs['fp32']:.3f} ({len(ctx.y)} points; tolerance {AMP_TOLERANCE:.3f})"}
