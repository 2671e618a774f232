"""Attack objectives: per-sample losses that an attack MAXIMISES.

Chosen with ``objective=`` on every gradient attack:

``ce``
    Cross-entropy of the true class (Goodfellow et al. 2015; Madry et al. 2018).
    Large when the true class loses probability mass.
``margin``
    The Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (Carlini & Wagner 2017,
    https://arxiv.org/abs/1608.04644): positive exactly when misclassified and,
    unlike CE, not saturated by a confident softmax.
``lkd``
    GM-adaptive: the largest non-true logit ``max_{j != y} z_j``. For a
    Gaussian-mixture head ``z_j = -||f - mu_j||^2 / 2``, so raising it pulls the
    feature into another class's Gaussian, where it is both misclassified and
    of high likelihood, i.e. it looks clean to a likelihood detector
    (Wan et al. 2018, https://arxiv.org/abs/1803.02988).
``joint``
    White-box: misclassify AND evade a given detector.
    ``min(margin, 0) - detector_weight * relu(score - threshold(fpr))``: the
    misclassification term stops rewarding once the point is misclassified, so
    the remaining steps are spent pulling the detector score below the
    threshold calibrated at false-positive rate ``fpr``. Needs ``detector=``,
    an object with ``score_from(features, logits) -> (N,)`` (differentiable,
    higher = more adversarial) and ``threshold(fpr) -> float``.

The true class is masked with the most negative float, never by multiplying
with a zero one-hot: GM logits are all negative, and a zeroed entry would win
the max.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from robench.attacks.params import check_choice, check_number
from robench.errors import UsageError

OBJECTIVES = ("ce", "margin", "lkd", "joint")
JOINT_OPTIONS = ("detector", "fpr", "detector_weight")


def true_and_best_other(logits: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, K), (N,) -> the true logit z_y and the best other logit max_{j != y} z_j, each (N,)."""
    index = y.unsqueeze(1)
    true = logits.gather(1, index).squeeze(1)
    other = logits.scatter(1, index, torch.finfo(logits.dtype).min).amax(dim=1)
    return true, other


class Objective:
    """A per-sample loss to maximise; ``needs_features`` asks for the (N, D) features too."""

    name = ""
    needs_features = False

    def __call__(self, logits: torch.Tensor, y: torch.Tensor,
                 features: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> Dict[str, Any]:
        """Extra settings to record next to the objective's name."""
        return {}

    def won(self, logits: torch.Tensor, y: torch.Tensor,
            features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N,) bool: the attacker has reached this objective's goal (misclassified)."""
        true, other = true_and_best_other(logits, y)
        return other > true


class CrossEntropy(Objective):
    name = "ce"

    def __call__(self, logits, y, features=None):
        return F.cross_entropy(logits, y, reduction="none")


class Margin(Objective):
    name = "margin"

    def __call__(self, logits, y, features=None):
        true, other = true_and_best_other(logits, y)
        return other - true


class LargestOther(Objective):
    name = "lkd"

    def __call__(self, logits, y, features=None):
        return true_and_best_other(logits, y)[1]


class Joint(Objective):
    """Misclassify and stay under the detector's threshold (see the module docstring)."""

    name = "joint"
    needs_features = True

    def __init__(self, detector: Any, fpr: float = 0.05, detector_weight: float = 1.0) -> None:
        self.detector = detector
        self.fpr = fpr
        self.detector_weight = detector_weight
        # Calibrated once: the threshold is a constant of the threat model, not of the batch.
        self.threshold = float(detector.threshold(fpr))

    def __call__(self, logits, y, features=None):
        true, other = true_and_best_other(logits, y)
        score = self.detector.score_from(features, logits)
        return (other - true).clamp(max=0.0) - self.detector_weight * F.relu(score - self.threshold)

    def won(self, logits, y, features=None):
        """Misclassified and under the detector's threshold."""
        flagged = self.detector.score_from(features, logits) > self.threshold
        return super().won(logits, y) & ~flagged

    def params(self) -> Dict[str, Any]:
        name = getattr(self.detector, "name", None) or type(self.detector).__name__
        return {"detector": str(name), "fpr": self.fpr, "detector_weight": self.detector_weight,
                "threshold": self.threshold}


def make_objective(where: str, name: Any, options: Dict[str, Any]) -> Objective:
    """Build the objective ``name``; ``options`` are the joint objective's settings.

    Raises:
        UsageError: unknown name, a detector option without ``joint``, ``joint``
            without a detector, or a bad ``fpr`` / ``detector_weight``.
    """
    check_choice(where, "objective", name, OBJECTIVES)
    given = {k: v for k, v in options.items() if v is not None}
    if name != "joint":
        if given:
            raise UsageError(f"{where}: {', '.join(sorted(given))}: used only by objective='joint', "
                             f"not {name!r}")
        return {"ce": CrossEntropy, "margin": Margin, "lkd": LargestOther}[name]()
    detector = given.get("detector")
    if detector is None or not hasattr(detector, "score_from") or not hasattr(detector, "threshold"):
        raise UsageError(f"{where}: objective 'joint' needs detector=<a fitted detector with "
                         f"score_from(features, logits) and threshold(fpr)>")
    fpr = check_number(where, "fpr", given.get("fpr", 0.05), 0.0, 1.0, strict=True)
    weight = check_number(where, "detector_weight", given.get("detector_weight", 1.0), 0.0)
    return Joint(detector, fpr=fpr, detector_weight=weight)
