"""Threat models: what the attacker knows. Written into every result row."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Dict, List

if TYPE_CHECKING:
    import torch

from robench.errors import UsageError


class ThreatModel(str, Enum):
    """The attacker's knowledge.

    GRAY_BOX: the classifier's gradients, but not that a detector exists
        (also called zero-knowledge or semi-white-box).
    WHITE_BOX: classifier and detector, attacked together: a cascade of adaptive
        candidates (:func:`white_box_candidates`), each on the points the ones
        before have not won; the per-sample worst case counts.
    BLACK_BOX: examples crafted on a surrogate checkpoint and transferred.
    """

    GRAY_BOX = "gray-box"
    WHITE_BOX = "white-box"
    BLACK_BOX = "black-box"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str) -> "ThreatModel":
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise UsageError(
                f"unknown threat model '{text}' (known: {', '.join(t.value for t in cls)})") from None


@dataclass(frozen=True)
class Candidate:
    """One attack a cell runs: a label for ``objective_wins``, the registry name and its arguments.

    ``kwargs`` may hold ``detector=True``: the cell's fitted detector goes there
    (with the threshold's false-positive rate) when the attack is built.
    """

    label: str
    attack: str
    kwargs: Dict[str, Any] = field(default_factory=dict)


def white_box_candidates(attack: str, kwargs: Dict[str, Any], is_gm: bool, has_detector: bool,
                         num_classes: int, given_label: str = "given") -> List[Candidate]:
    """What a white-box cell of a gradient attack runs, in order, each on the points still not won.

    1. the attack as given (its examples are the gray-box cell's, computed once);
    2. GM models: the multi-targeted likelihood pull (``objective=lkd, targets=K``): one run per
       target among the K = classes - 1 highest other classes, pulling the feature to that
       class's mean, where it is misclassified and of high likelihood;
    3. with a detector: the joint objective (misclassify, then get under the threshold) and
       selective PGD (Bryniarski et al., ICLR 2022: classifier steps until misclassified,
       detector steps after);
    4. the margin objective (CW loss, not saturated by a confident softmax).
    """
    given = Candidate(str(kwargs.get("objective", given_label)), attack, dict(kwargs))
    plain = {k: v for k, v in kwargs.items() if k not in ("objective", "targets", "update")}
    extra = []
    if is_gm and num_classes > 2:
        extra.append(Candidate(f"lkd-t{num_classes - 1}", attack,
                               {**plain, "objective": "lkd", "targets": num_classes - 1}))
    if has_detector:
        extra.append(Candidate("joint", attack, {**plain, "objective": "joint", "detector": True}))
        extra.append(Candidate("selective", attack, {**plain, "objective": "joint", "update": "selective",
                                                     "detector": True}))
    extra.append(Candidate("margin", attack, {**plain, "objective": "margin"}))
    return [given] + [c for c in extra if c.kwargs != given.kwargs]


def defender_outcome(correct: "torch.Tensor", flagged: "torch.Tensor") -> "torch.Tensor":
    """Rank of each adversarial example from the attacker's view.

    2: misclassified and not flagged (the attacker won), 1: misclassified but
    flagged, 0: still correctly classified.
    """
    import torch

    return torch.where(correct, torch.zeros_like(correct, dtype=torch.long),
                       torch.where(flagged, 1, 2))
