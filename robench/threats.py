"""Threat models: what the attacker knows. Written into every result row."""

from __future__ import annotations

from enum import Enum
from typing import List, Sequence

from robench.errors import UsageError


class ThreatModel(str, Enum):
    """The attacker's knowledge.

    GRAY_BOX: the classifier's gradients, but not that a detector exists
        (also called zero-knowledge or semi-white-box).
    WHITE_BOX: classifier and detector, attacked together with adaptive
        objectives; the per-sample worst case over objectives counts.
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


def white_box_objectives(is_gm: bool) -> List[str]:
    """The adaptive objectives a white-box attacker tries (``lkd`` only for GM models)."""
    return ["ce", "margin", "joint"] + (["lkd"] if is_gm else [])


def defender_outcome(correct: "torch.Tensor", flagged: "torch.Tensor") -> "torch.Tensor":  # noqa: F821
    """Rank of each adversarial example from the attacker's view.

    2: misclassified and not flagged (the attacker won), 1: misclassified but
    flagged, 0: still correctly classified.
    """
    import torch

    return torch.where(correct, torch.zeros_like(correct, dtype=torch.long),
                       torch.where(flagged, 1, 2))


def pick_worst_case(outcomes: Sequence["torch.Tensor"], scores: Sequence["torch.Tensor"]) -> "torch.Tensor":  # noqa: F821
    """Per sample, the index of the candidate worst for the defender.

    Higher outcome rank wins; among equal ranks the lower detector score
    (the less suspicious example) wins; ties keep the earlier objective.
    """
    import torch

    rank = torch.stack([o.double() for o in outcomes])  # (C, N)
    score = torch.stack([s.double() for s in scores])
    score = torch.nan_to_num(score, nan=0.0)
    # Lexicographic: rank dominates, then -score; normalise score into (0, 1).
    spread = (score.max() - score.min()).clamp_min(1e-12)
    key = rank - 0.5 * (score - score.min()) / spread
    return key.argmax(dim=0)
