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
from robench.threats import Candidate, ThreatModel, defender_outcome, white_box_candidates

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


def craft(cell: Cell, cand: Candidate, source: Source, ctx: ModelContext, cfg: RunConfig, cache: CraftCache,
          quiet: bool, detector: Any = None, active: Optional[torch.Tensor] = None) -> Crafted:
    """One attack (``cand``) over the test points in batches.

    ``active``: a bool mask of the points to attack; the others come back
    unchanged. The batches are those of a full run, so an attacked point gets
    exactly the example it would get there.
    """
    from robench.progress import progress_bar

    kwargs = dict(cand.kwargs)
    if kwargs.pop("detector", None):
        kwargs.update(detector=detector, fpr=FLAG_FPR)
    if accepts(cand.attack, "seed"):
        kwargs.setdefault("seed", cell.seed)
    key = craft_key(cell, cand.attack, source, ctx, kwargs, cfg, active)
    hit = cache.get(key)
    if hit is not None:
        return hit
    attack = build_attack(cand.attack, cell.eps, source.model, kwargs, cfg)
    label = f"{cell.attack} eps={cell.eps:g} {cell.threat.value} {cand.label}"
    bar = progress_bar(total=len(ctx.y), desc=label, unit="img", disable=quiet)
    chunks, halved = [], []
    masks = active.split(cfg.batch_size) if active is not None else [None] * len(ctx.y.split(cfg.batch_size))
    for xb, yb, mb in zip(ctx.x.split(cfg.batch_size), ctx.y.split(cfg.batch_size), masks):
        chunks.append(attack_batch(attack, xb, yb, mb, halved))  # every batch: the streams stay aligned
        bar.update(len(yb))
    bar.close()
    passes = int(getattr(attack, "n_forward", 0)) + int(getattr(attack, "n_backward", 0))
    used = str(getattr(attack, "objective", None) or "default")
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


def build_attack(attack: str, eps: float, model: Any, kwargs: Dict[str, Any], cfg: RunConfig) -> Any:
    """An attack with the run's runtime options (cascade, bf16 autocast, torch.compile)."""
    from robench.attacks import Runtime, create_attack

    runtime = Runtime(amp=cfg.amp, compile=bool(cfg.compile), cascade=bool(cfg.cascade))
    return create_attack(attack, model, eps=eps, runtime=runtime, **kwargs)


def craft_key(cell: Cell, attack: str, source: Source, ctx: ModelContext, kwargs: Dict[str, Any],
              cfg: RunConfig, active: Optional[torch.Tensor]) -> str:
    """What decides an attack's output: gray-box and the white-box attacker's first candidate share it."""
    if "objective" not in kwargs and accepts(attack, "objective"):
        kwargs = {**kwargs, "objective": default_objective(attack)}
    detector = kwargs.get("detector")
    plain = {k: repr(v) for k, v in kwargs.items() if k != "detector"}
    mask = None if active is None else hashlib.sha1(active.to(torch.uint8).cpu().numpy().tobytes()).hexdigest()
    content = {"source": source.sha256, "points": ctx.points, "attack": attack, "eps": cell.eps,
               "kwargs": plain, "detector": getattr(detector, "name", None), "target": ctx.sha256,
               "mask": mask, "amp": cfg.amp, "compile": cfg.compile, "cascade": cfg.cascade,
               "batch_size": cfg.batch_size}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def candidates(cell: Cell, ctx: ModelContext, detector: Any) -> List[Candidate]:
    """The attacks a cell runs: a preset's members, and under white-box the adaptive candidates."""
    from robench.presets import PRESETS

    k = ctx.model.num_classes
    white = cell.threat == ThreatModel.WHITE_BOX
    if cell.attack in PRESETS:
        members = PRESETS[cell.attack].members(cell.kwargs, k)
        if not white:
            return members
        norm = PRESETS[cell.attack].norm(cell.kwargs)
        extra = white_box_candidates(members[0].attack, {"steps": 100}, ctx.model.is_gm, detector is not None, k,
                                     norm=norm, steps=100)
        covered = ("margin", "apgd-dlr", f"apgd-dlr-t{k - 1}")  # APGD-CE and APGD-T are the preset's own
        return members[:2] + [c for c in extra[1:] if c.label not in covered] + members[2:]
    base = Candidate(str(cell.kwargs.get("objective", default_objective(cell.attack))), cell.attack,
                     dict(cell.kwargs))
    if not white or not accepts(cell.attack, "objective"):
        return [base]
    return white_box_candidates(cell.attack, cell.kwargs, ctx.model.is_gm, detector is not None, k, base.label,
                                norm=attack_norm_of(cell.attack), steps=attack_steps(cell.attack, cell.kwargs))


def attack_norm_of(attack: str) -> str:
    from robench.registry import registry

    return str(getattr(registry("attacks").get(attack.partition(":")[0]), "norm", "") or "")


def attack_steps(attack: str, kwargs: Dict[str, Any]) -> int:
    """The cell's step budget (0 for an attack without steps, such as FGSM)."""
    from robench.registry import registry

    if "steps" in kwargs:
        return int(kwargs["steps"])
    if attack.startswith(("ta:", "art:")) or not accepts(attack, "steps"):
        return 0
    return int(inspect.signature(registry("attacks").get(attack)).parameters["steps"].default)


def default_objective(attack: str) -> str:
    """The objective an attack uses when none is given ("default" for one without objectives)."""
    from robench.registry import registry

    if not accepts(attack, "objective"):
        return "default"
    return str(inspect.signature(registry("attacks").get(attack)).parameters["objective"].default)


def craft_cell(cell: Cell, ctx: ModelContext, surrogate: Optional[Source], cfg: RunConfig, cache: CraftCache,
               quiet: bool, active: Optional[torch.Tensor] = None) -> Crafted:
    """The cell's examples under its threat model: its candidates in a cascade, the worst case per point.

    Each candidate after the first runs only on the points the ones before have not won
    (misclassified; under white-box also not flagged at the threshold the attacker evades).
    A point takes a later candidate's example when it is worse for the defender (a higher
    rank, or the same rank and a lower detector score), so the cell is never weaker
    than any of its candidates, at a bounded cost.
    """
    white = cell.threat == ThreatModel.WHITE_BOX
    detector = ctx.detectors.get(cell.detectors[0]) if white else None
    source = surrogate if cell.threat == ThreatModel.BLACK_BOX else Source(ctx.model, ctx.sha256)
    cands = candidates(cell, ctx, detector)
    scope = torch.ones(len(ctx.y), dtype=torch.bool) if active is None else active
    x_best, rank = ctx.x.clone(), torch.full((len(ctx.y),), -1, dtype=torch.long)
    score, pick = torch.full((len(ctx.y),), float("inf")), torch.full((len(ctx.y),), -1, dtype=torch.long)
    passes, halved, used = 0, (), cands[0].label
    for i, cand in enumerate(cands):
        mask = active if i == 0 else scope & (rank < 2)
        if mask is not None and not bool(mask.any()):
            break
        made = craft(cell, cand, source, ctx, cfg, cache, quiet, detector=detector, active=mask)
        passes, halved, used = passes + made.passes, halved + made.halved, made.objective
        new_rank, new_score = attacker_view(ctx, detector, made.x_adv, cfg.batch_size)
        take = (scope if mask is None else mask) & ((new_rank > rank) | ((new_rank == rank) & (new_score < score)))
        x_best[take], rank[take], score[take], pick[take] = made.x_adv[take], new_rank[take], new_score[take], i
    if len(cands) == 1:
        return Crafted(x_best, passes, used, "", halved)
    wins = ";".join(f"{c.label}:{int(((pick == i) & (rank == 2)).sum())}" for i, c in enumerate(cands))
    return Crafted(x_best, passes, "cascade:" + "+".join(c.label for c in cands), wins, halved)


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
