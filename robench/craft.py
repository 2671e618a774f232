"""Crafting a cell's adversarial examples under its threat model.

``craft`` runs one attack over the test points in batches; ``white_box`` runs
the adaptive candidates against one detector and keeps, per point, the one worst
for the defender; ``run_chain`` is the cascade. A run passes one
:class:`CraftCache` to all of them: the gray-box cell of an (attack, eps) and the
white-box attacker's ``ce`` candidate are the same computation, done once.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch

from robench.config import RunConfig
from robench.plan import Cell
from robench.prepare import ModelContext, Source
from robench.threats import ThreatModel, defender_outcome, pick_worst_case, white_box_objectives

FLAG_FPR = 0.05  # the calibrated threshold an adaptive attacker must stay under


@dataclass(frozen=True)
class Crafted:
    """A cell's adversarial examples and how they were made."""

    x_adv: torch.Tensor
    passes: int  # forward + backward passes, summed over the points
    objective: str
    objective_wins: str = ""  # white-box: "ce:12;margin:30", which candidate won how many points
    halved: tuple = ()  # batch sizes that ran out of GPU memory and were split in two


class CraftCache:
    """The crafted sets of one run, keyed by what decides them (never by object identity).

    Bounded: an (attack, eps) runs its threat models one after another, so only the
    most recent few entries are ever reused.
    """

    def __init__(self, size: int = 6) -> None:
        self.size = size
        self._items: "OrderedDict[str, Crafted]" = OrderedDict()

    def get(self, key: str) -> Optional[Crafted]:
        return self._items.get(key)

    def put(self, key: str, value: Crafted) -> None:
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def accepts(name: str, argument: str) -> bool:
    """Whether the attack registered as ``name`` takes ``argument`` (a family member: its family's)."""
    from robench.registry import registry

    cls = registry("attacks").get(name.partition(":")[0])
    return argument in inspect.signature(cls).parameters


def craft(cell: Cell, source: Source, ctx: ModelContext, cfg: RunConfig, cache: CraftCache, quiet: bool,
          objective: Optional[str] = None, detector: Any = None,
          active: Optional[torch.Tensor] = None) -> Crafted:
    """One attack over the test points in batches.

    ``active`` (the cascade): a bool mask of the points to attack; the others come
    back unchanged. The batches are those of a full run, so an attacked point gets
    exactly the example it would get there.
    """
    from robench.progress import progress_bar

    kwargs = dict(cell.kwargs)
    if objective is not None:
        kwargs["objective"] = objective
        if objective == "joint":
            kwargs.update(detector=detector, fpr=FLAG_FPR)
    if accepts(cell.attack, "seed"):
        kwargs.setdefault("seed", cell.seed)
    key = craft_key(cell, source, ctx, kwargs, cfg, active)
    hit = cache.get(key)
    if hit is not None:
        return hit
    attack = build_attack(cell, source.model, kwargs, cfg)
    label = f"{cell.attack} eps={cell.eps:g} {cell.threat.value}" + (f" {objective}" if objective else "")
    bar = progress_bar(total=len(ctx.y), desc=label, unit="img", disable=quiet)
    chunks, halved = [], []
    masks = active.split(cfg.batch_size) if active is not None else [None] * len(ctx.y.split(cfg.batch_size))
    for xb, yb, mb in zip(ctx.x.split(cfg.batch_size), ctx.y.split(cfg.batch_size), masks):
        chunks.append(attack_batch(attack, xb, yb, mb, halved))  # every batch: the streams stay aligned
        bar.update(len(yb))
    bar.close()
    passes = int(getattr(attack, "n_forward", 0)) + int(getattr(attack, "n_backward", 0))
    used = objective or str(getattr(attack, "objective", None) or "default")
    result = Crafted(torch.cat(chunks), passes, used, halved=tuple(halved))
    cache.put(key, result)
    return result


def attack_batch(attack: Any, x: torch.Tensor, y: torch.Tensor, active: Optional[torch.Tensor],
                 halved: List[int]) -> torch.Tensor:
    """One batch; a batch that runs out of GPU memory is split in two and each half retried.

    Said once per cell and recorded (``halved``, then the manifest): the halves draw
    their own random streams, so such a cell differs from one run at the full batch.
    """
    try:
        return attack(x, y, active=active).detach().cpu()
    except torch.cuda.OutOfMemoryError:
        if len(x) == 1:
            from robench.errors import RobenchError

            raise RobenchError("out of GPU memory with a single point per batch; free GPU memory or "
                               "use --device cpu") from None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if not halved:
        from robench.progress import note

        note(f"out of GPU memory at a batch of {len(x)}: halving it and retrying (recorded in the manifest)")
    halved.append(len(x))
    half = (len(x) + 1) // 2
    parts = [(slice(0, half)), slice(half, len(x))]
    return torch.cat([attack_batch(attack, x[p], y[p], None if active is None else active[p], halved)
                      for p in parts])


def build_attack(cell: Cell, model: Any, kwargs: Dict[str, Any], cfg: RunConfig) -> Any:
    """The cell's attack with the run's runtime options (cascade, bf16 autocast, torch.compile)."""
    from robench.attacks import create_attack

    attack = create_attack(cell.attack, model, eps=cell.eps, **kwargs)
    attack.cascade = bool(cfg.cascade)
    attack.amp = torch.bfloat16 if cfg.amp == "bf16" else None
    attack.compile = bool(cfg.compile)
    return attack


def craft_key(cell: Cell, source: Source, ctx: ModelContext, kwargs: Dict[str, Any], cfg: RunConfig,
              active: Optional[torch.Tensor]) -> str:
    """What decides an attack's output: gray-box and the white-box ``ce`` candidate share it."""
    if "objective" not in kwargs and accepts(cell.attack, "objective"):
        from robench.registry import registry

        default = inspect.signature(registry("attacks").get(cell.attack)).parameters["objective"].default
        kwargs = {**kwargs, "objective": default}
    detector = kwargs.get("detector")
    plain = {k: repr(v) for k, v in kwargs.items() if k != "detector"}
    mask = None if active is None else hashlib.sha1(active.to(torch.uint8).cpu().numpy().tobytes()).hexdigest()
    content = {"source": source.sha256, "points": ctx.points, "attack": cell.attack, "eps": cell.eps,
               "kwargs": plain, "detector": getattr(detector, "name", None), "target": ctx.sha256,
               "mask": mask, "amp": cfg.amp, "compile": cfg.compile, "cascade": cfg.cascade,
               "batch_size": cfg.batch_size}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def craft_cell(cell: Cell, ctx: ModelContext, surrogate: Optional[Source], cfg: RunConfig, cache: CraftCache,
               quiet: bool, active: Optional[torch.Tensor] = None) -> Crafted:
    """The cell's examples under its threat model."""
    if cell.threat == ThreatModel.WHITE_BOX:
        return white_box(cell, ctx, cfg, cache, quiet, active=active)
    source = surrogate if cell.threat == ThreatModel.BLACK_BOX else Source(ctx.model, ctx.sha256)
    return craft(cell, source, ctx, cfg, cache, quiet, active=active)


def white_box(cell: Cell, ctx: ModelContext, cfg: RunConfig, cache: CraftCache, quiet: bool,
              active: Optional[torch.Tensor] = None) -> Crafted:
    """Per point, the worst case for the defender over the adaptive objectives."""
    detector = ctx.detectors.get(cell.detectors[0])
    target = Source(ctx.model, ctx.sha256)
    if not accepts(cell.attack, "objective"):
        return craft(cell, target, ctx, cfg, cache, quiet, active=active)
    objectives = [o for o in white_box_objectives(ctx.model.is_gm) if o != "joint" or detector is not None]
    candidates, outcomes, scores, total, halved = [], [], [], 0, ()
    for obj in objectives:
        made = craft(cell, target, ctx, cfg, cache, quiet, objective=obj, detector=detector, active=active)
        total += made.passes
        halved += made.halved
        outcome, score = attacker_view(ctx, detector, made.x_adv, cfg.batch_size)
        candidates.append(made.x_adv)
        outcomes.append(outcome)
        scores.append(score)
    best = pick_worst_case(outcomes, scores)
    x_best = torch.stack(candidates)[best, torch.arange(len(best))]
    wins = ";".join(f"{o}:{int((best == i).sum())}" for i, o in enumerate(objectives))
    return Crafted(x_best, total, "worst-of:" + "+".join(objectives), wins, halved)


def attacker_view(ctx: ModelContext, detector: Any, x: torch.Tensor, batch_size: int):
    """(outcome rank, detector score) per point: 2 misclassified and not flagged at the threshold
    the attacker evades, 1 misclassified but flagged, 0 still correct."""
    pred = ctx.model.predict(x, batch_size)
    if detector is None:
        score = torch.zeros(len(pred))
        flagged = torch.zeros(len(pred), dtype=torch.bool)
    else:
        score = detector.score(x, batch_size=batch_size)
        flagged = detector.flag(score, FLAG_FPR)
    return defender_outcome(pred == ctx.y, flagged.cpu()), score


def chain_examples(cells: List[Cell], ctx: ModelContext, surrogate: Optional[Source], cfg: RunConfig,
                   cache: CraftCache, quiet: bool) -> List[Crafted]:
    """``--cascade``: the attacks of a chain in order, each on the points the ones before have not won.

    An attacked point takes the new example unless the one it had is worse for
    the defender (the per-point worst case, as in white-box); a won point keeps
    the example that won it. So robust accuracy never rises along the chain.
    Returns, per cell, the examples so far (the chain's worst case up to it).
    """
    won = ctx.clean_pred != ctx.y  # misclassified when clean: nothing to attack
    x_best, rank = ctx.x, torch.zeros(len(ctx.y), dtype=torch.long)
    out = []
    for cell in cells:
        active = ~won
        made = craft_cell(cell, ctx, surrogate, cfg, cache, quiet, active=active)
        detector = ctx.detectors.get(cell.detectors[0]) if cell.threat == ThreatModel.WHITE_BOX else None
        new_rank, _ = attacker_view(ctx, detector, made.x_adv, cfg.batch_size)
        take = active & (new_rank >= rank)
        x_best = torch.where(take.view(-1, *[1] * (made.x_adv.dim() - 1)), made.x_adv, x_best)
        rank = torch.where(take, new_rank, rank)
        won = won | (rank == 2)
        out.append(Crafted(x_best, made.passes, made.objective, made.objective_wins, made.halved))
    return out
