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


APGD = {"Linf": "apgd", "L2": "apgd-l2"}
CARRIED = ("steps", "restarts", "eot")  # what an APGD candidate takes over from the cell's attack


def white_box_candidates(attack: str, kwargs: Dict[str, Any], is_gm: bool, has_detector: bool,
                         num_classes: int, given_label: str = "given", norm: str = "",
                         steps: int = 0) -> List[Candidate]:
    """What a white-box cell of a gradient attack runs, in order, each on the points still not won.

    With a detector (won = misclassified AND not flagged):

    1. the attack as given (its examples are the gray-box cell's, computed once);
    2. the detector-aware pull, on APGD with the cell's step budget for an iterative attack
       (Croce & Hein 2020: its step-size schedule finds what a fixed step misses): on GM models
       multi-targeted, ``objective=joint, targets=K-1``, one run per other class by clean logit,
       pulling the feature to that class's mean until it is misclassified and under the threshold
       (its likelihood is high there); on other models untargeted ``objective=joint``;
    3. for an iterative attack, selective PGD (Bryniarski et al., ICLR 2022): classifier steps
       while the point is still correct, detector steps after. (The joint objective on the
       cell's own attack is not run as well: APGD with the same budget and objective finds
       at least what it finds, and each candidate costs passes on every point not yet won.)

    Without a detector (won = misclassified): the attack as given, the margin (C&W) objective,
    for an iterative attack APGD-DLR and then APGD-T, multi-targeted DLR ``targets=K-1`` (the
    targeted margin with three classes: untargeted margin and DLR steps only ever pull towards
    the runner-up class and miss points that only a class further down can take, as exact
    verification of the 784-64-32 MLP showed, benchmarks/verify_mnist5k.md), and on GM models
    the multi-targeted likelihood pull ``objective=lkd, targets=K-1``. Later candidates run only
    where earlier ones failed, so the cost stays bounded (``passes_per_sample`` says what it was).
    """
    given = Candidate(str(kwargs.get("objective", given_label)), attack, dict(kwargs))
    plain = {k: v for k, v in kwargs.items() if k not in ("objective", "targets", "update")}
    apgd = APGD.get(norm) if steps else None
    on_apgd = (apgd, {**{k: plain[k] for k in CARRIED if k in plain}, "steps": steps}) if apgd else (attack, plain)
    k = num_classes - 1
    if has_detector:
        pull = {**on_apgd[1], "objective": "joint", "detector": True, **({"targets": k} if is_gm and k > 1 else {})}
        extra = [Candidate(f"{_short(on_apgd[0])}-joint" + (f"-t{k}" if "targets" in pull else ""), on_apgd[0], pull)]
        if steps:  # one step would be the classifier step the given attack already took
            extra.append(Candidate("selective", attack, {**plain, "objective": "joint", "update": "selective",
                                                         "detector": True}))
    else:
        extra = [Candidate("margin", attack, {**plain, "objective": "margin"})]
        if apgd:
            extra.append(Candidate(f"{_short(apgd)}-dlr", apgd, {**on_apgd[1], "objective": "dlr"}))
            if k > 1:  # targeted DLR needs four classes; with three, the targeted margin
                aim = "dlr" if num_classes >= 4 else "margin"
                extra.append(Candidate(f"{_short(apgd)}-{aim}-t{k}", apgd,
                                       {**on_apgd[1], "objective": aim, "targets": k}))
        if is_gm and k > 1:
            extra.append(Candidate(f"lkd-t{k}", attack, {**plain, "objective": "lkd", "targets": k}))
    return [given] + [c for c in extra if (c.attack, c.kwargs) != (given.attack, given.kwargs)]


def _short(attack: str) -> str:
    return "apgd" if attack.startswith("apgd") else attack


def defender_outcome(correct: "torch.Tensor", flagged: "torch.Tensor") -> "torch.Tensor":
    """Rank of each adversarial example from the attacker's view.

    2: misclassified and not flagged (the attacker won), 1: misclassified but
    flagged, 0: still correctly classified.
    """
    import torch

    return torch.where(correct, torch.zeros_like(correct, dtype=torch.long),
                       torch.where(flagged, 1, 2))
