"""Planning a run: which cells it has, their ids, their seeds, and the cascade's chains.

A cell's id is a content hash of everything that decides its numbers (the
checkpoint's sha256, attack and parameters, eps, threat, detectors, the test
points' indices and bytes, batch size, device type, seed, robench's version),
so finished cells are never recomputed and a changed parameter makes a new
cell. Each cell's attack draws from its own generator seeded from (seed, cell
key), so a killed and resumed run, a repeated run and a Ray run all write the
same results.csv byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from robench.config import RunConfig
from robench.threats import ThreatModel


@dataclass(frozen=True)
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

    @property
    def label(self) -> str:
        return self.attack + spec_suffix(self.kwargs)


@dataclass(frozen=True)
class Chain:
    """``--cascade``: the cells of one (eps, threat, detectors), run in attack order.

    Each attack runs only on the points the earlier ones left robust; a point
    already won keeps the example that won it. So the last cell's robust
    accuracy is the worst case over all attacks, at a fraction of the passes.
    """

    cells: List[Cell]

    @property
    def cell_id(self) -> str:
        return self.cells[0].cell_id

    def output_ids(self) -> List[str]:
        return [i for cell in self.cells for i in cell.output_ids()]


Job = Union[Cell, Chain]


def cells_of(item: Job) -> List[Cell]:
    return list(item.cells) if isinstance(item, Chain) else [item]


@dataclass(frozen=True)
class PlanKey:
    """What every cell of one model shares in its key."""

    model_sha: str
    points: str  # digest of the test points' indices and bytes
    dataset: str
    device_type: str
    detectors: Sequence[str]
    surrogate_sha: Optional[str] = None


def plan_cells(cfg: RunConfig, key: PlanKey) -> List[Job]:
    """The grid's cells for one model, in order; with ``cfg.cascade``, grouped into chains."""
    from robench.specs import parse_spec

    cells: List[Cell] = []
    chains: Dict[tuple, List[Cell]] = {}
    for spec in cfg.attacks:
        name, kwargs = parse_spec(spec)
        for eps in cfg.eps_for(spec):
            for threat in (ThreatModel.parse(t) for t in cfg.threats_for(spec)):
                for dets in detector_groups(threat, key.detectors):
                    chain = chains.setdefault((eps, threat, tuple(dets)), []) if cfg.cascade else []
                    cell = _cell(cfg, key, name, kwargs, eps, threat, dets, [c.label for c in chain])
                    chain.append(cell)
                    if not cfg.cascade:
                        cells.append(cell)
    return [Chain(c) for c in chains.values()] if cfg.cascade else cells


def detector_groups(threat: ThreatModel, detectors: Sequence[str]) -> List[List[str]]:
    """White-box attacks each detector on its own; the other threats craft once for all of them."""
    return [[d] for d in detectors] if threat == ThreatModel.WHITE_BOX else [list(detectors)]


def _cell(cfg: RunConfig, key: PlanKey, name: str, kwargs: Dict[str, Any], eps: float, threat: ThreatModel,
          dets: List[str], after: List[str]) -> Cell:
    from robench import __version__

    content = {"model": key.model_sha, "attack": name, "kwargs": kwargs, "eps": eps, "threat": threat.value,
               "detectors": dets, "index": key.points, "dataset": key.dataset, "arch": cfg.arch,
               "batch_size": cfg.batch_size, "device": key.device_type, "seed": cfg.seed,
               "surrogate": key.surrogate_sha, "version": __version__}
    if cfg.amp or cfg.compile:
        content.update(amp=cfg.amp, compile=cfg.compile)
    if cfg.cascade:
        content["cascade_after"] = after
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
    return Cell(digest[:16], name, kwargs, eps, threat, dets, attack_seed(key, name, kwargs, eps, cfg.seed), after)


def spec_suffix(kwargs: Dict[str, Any]) -> str:
    return (":" + ",".join(f"{k}={kwargs[k]}" for k in sorted(kwargs))) if kwargs else ""


def attack_seed(key: PlanKey, name: str, kwargs: Dict[str, Any], eps: float, seed: int) -> int:
    """The attack generator's seed: the same for every threat model and detector of an
    (attack, eps), so the white-box attacker's ``ce`` candidate is exactly the gray-box
    example and white-box can never come out weaker than gray-box by chance."""
    content = json.dumps({"model": key.model_sha, "attack": name, "kwargs": kwargs, "eps": eps,
                          "index": key.points, "seed": seed}, sort_keys=True, default=str)
    return int(hashlib.sha256(content.encode()).hexdigest()[:8], 16) ^ seed


def points_digest(*tensors: Any) -> str:
    """The test points' indices and bytes: a dataset file replaced on disk means new cells."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def cell_seeds(items: Sequence[Job]) -> Iterator[tuple]:
    """(output cell id, its attack seed) of every cell the items write (for the manifest)."""
    for item in items:
        for cell in cells_of(item):
            for cell_id in cell.output_ids():
                yield cell_id, cell.seed
