"""Attack presets: named cascades of attacks that run as one cell.

``standard`` is the analogue of AutoAttack's ``standard`` version (Croce & Hein,
ICML 2020, https://arxiv.org/abs/2003.01690): APGD-CE, APGD-T (targeted DLR, 9
targets), FAB-T and Square, in a cascade, each attack only on the points the
ones before have not won. ``standard`` is Linf, ``standard:norm=L2`` the L2
version. Under white-box the cell adds the detector-aware candidates of
:func:`robench.threats.white_box_candidates` (built on APGD) after APGD-T, and a
point counts as won only when misclassified AND not flagged.

One results row per cell (``attack = standard``); ``objective_wins`` says which
member won how many points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from robench.threats import Candidate

NORMS = {"linf": "Linf", "l2": "L2"}


@dataclass(frozen=True)
class Preset:
    """A named cascade of attacks."""

    name: str
    summary: str

    def norm(self, kwargs: Dict[str, Any]) -> str:
        return NORMS[str(kwargs.get("norm", "Linf")).lower()]

    def problems(self, kwargs: Dict[str, Any]) -> List[Tuple[Optional[str], str]]:
        out: List[Tuple[Optional[str], str]] = []
        for key in sorted(set(kwargs) - {"norm"}):
            out.append((key, f"attack {self.name}: unknown argument '{key}' (a preset takes only norm=Linf|L2)"))
        if "norm" in kwargs and str(kwargs["norm"]).lower() not in NORMS:
            out.append(("norm", f"attack {self.name}: norm must be Linf or L2, got {kwargs['norm']!r}"))
        if "eps" in kwargs:
            out.append(("eps", f"attack {self.name}: give eps with --eps, not in the attack spec"))
        return out

    def members(self, kwargs: Dict[str, Any], num_classes: int) -> List[Candidate]:
        """The cascade's attacks in order (the gray-box and black-box cell runs exactly these)."""
        norm = self.norm(kwargs)
        apgd = "apgd" if norm == "Linf" else "apgd-l2"
        targets = max(1, min(9, num_classes - 1))
        return [
            Candidate("apgd-ce", apgd, {"objective": "ce", "steps": 100}),
            Candidate("apgd-t", apgd, {"objective": "dlr", "targets": targets, "steps": 100}),
            Candidate("fab-t", "ta:FAB", {"norm": norm, "steps": 100, "multi_targeted": True,
                                          "n_classes": num_classes, "n_restarts": 1}),
            Candidate("square", "ta:Square", {"norm": norm, "n_queries": 5000, "n_restarts": 1}),
        ]


PRESETS: Dict[str, Preset] = {
    "standard": Preset("standard", "AutoAttack-standard analogue: APGD-CE, APGD-T, FAB-T, Square, cascaded "
                                   "(white-box adds the detector-aware candidates)"),
}


def spec_norm(attack: str, kwargs: Dict[str, Any]) -> str:
    """The distance an attack's budget is measured in ("Linf", "L2"; "" for unbounded attacks): a
    preset's from its norm=, an adapter's from the library class it wraps, a native attack's own."""
    from robench.registry import registry

    if attack in PRESETS:
        return PRESETS[attack].norm(kwargs)
    factory = registry("attacks").get(attack.partition(":")[0])
    if getattr(factory, "is_family", False):
        return str(factory.norm_of(attack.partition(":")[2], kwargs) or "")
    return str(getattr(factory, "norm", "") or "")
