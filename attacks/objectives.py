"""Attack objectives: per-sample losses that an attack MAXIMISES.

Chosen with ``objective=`` on every gradient attack:

``ce``
    Cross-entropy of the true class (Goodfellow et al. 2015; Madry et al. 2018).
    Large when the true class loses probability mass.
``margin``
    The Carlini-Wagner margin ``max_{j != y} z_j - z_y`` (Carlini & Wagner 2017,
    https://arxiv.org/abs/1608.04644): positive exactly when misclassified and,
    unlike CE, not saturated by a confident softmax.
``dlr``
    The Difference of Logits Ratio of APGD (Croce & Hein 2020,
    https://arxiv.org/abs/2003.01690): ``-(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)``
    with ``z_pi1 >= z_pi2 >= ...`` the sorted logits. Invariant to shifting and
    scaling the logits, so a rescaled (or GM) head cannot mask its gradient.
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

Targeted (the multi-targeted attacks, ``targets=K``): the labels are then an
(N, 2) tensor of (true class, target class), and each objective aims at the
target t: ``ce`` -> ``-CE(t)``; ``margin`` -> ``z_t - max_{j != t} z_j``; ``dlr``
-> ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``; ``lkd`` -> ``z_t`` (for
a GM head, the target's log-likelihood); ``joint`` -> the targeted margin in
place of the margin. Whether the attacker won is always judged on the true class.

The true class is masked with the most negative float, never by multiplying
with a zero one-hot: GM logits are all negative, and a zeroed entry would win
the max.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from robench.errors import UsageError
from robench.params import Range, check_choice

OBJECTIVES = ("ce", "margin", "dlr", "lkd", "joint")
JOINT_OPTIONS = ("detector", "fpr", "detector_weight")
JOINT_RANGES = {"fpr": Range(float, 0.0, 1.0, low_open=True, high_open=True),
                "detector_weight": Range(float, 0.0)}


def true_and_best_other(logits: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, K), (N,) -> the true logit z_y and the best other logit max_{j != y} z_j, each (N,)."""
    index = y.unsqueeze(1)
    true = logits.gather(1, index).squeeze(1)
    other = logits.scatter(1, index, torch.finfo(logits.dtype).min).amax(dim=1)
    return true, other


def split_labels(y: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(N,) true labels -> (y, None); (N, 2) (true, target) pairs -> (y, t)."""
    if y.dim() == 2:
        return y[:, 0], y[:, 1]
    return y, None


def misclassified(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the best other class beats the true class (targeted labels: their true column)."""
    true, other = true_and_best_other(logits, split_labels(y)[0])
    return other > true


def aimed_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``max_{j != y} z_j - z_y`` untargeted; ``z_t - max_{j != t} z_j`` towards a target t."""
    true, target = split_labels(y)
    if target is None:
        z_y, other = true_and_best_other(logits, true)
        return other - z_y
    z_t, other = true_and_best_other(logits, target)
    return z_t - other


class Objective:
    """A per-sample loss to maximise.

    ``needs_features`` asks for the (N, D) features; ``uses_detector`` for the
    (N,) detector score, which the attack computes (through the detector's
    input step, see :meth:`robench.attacks.base.GradientAttack._detector_score`).
    """

    name = ""
    needs_features = False
    uses_detector = False
    min_classes = 2  # untargeted; targeted objectives may need more (``min_classes_targeted``)
    min_classes_targeted = 2

    def __call__(self, logits: torch.Tensor, y: torch.Tensor, features: Optional[torch.Tensor] = None,
                 score: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> Dict[str, Any]:
        """Extra settings to record next to the objective's name."""
        return {}

    def won(self, logits: torch.Tensor, y: torch.Tensor, features: Optional[torch.Tensor] = None,
            score: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(N,) bool: the attacker has reached this objective's goal (misclassified)."""
        return misclassified(logits, y)


class CrossEntropy(Objective):
    name = "ce"

    def __call__(self, logits, y, features=None, score=None):
        true, target = split_labels(y)
        if target is None:
            return F.cross_entropy(logits, true, reduction="none")
        return -F.cross_entropy(logits, target, reduction="none")


class Margin(Objective):
    name = "margin"

    def __call__(self, logits, y, features=None, score=None):
        return aimed_margin(logits, y)


class DLR(Objective):
    """Difference of Logits Ratio (APGD); the targeted form needs four classes."""

    name = "dlr"
    min_classes = 3
    min_classes_targeted = 4

    def __call__(self, logits, y, features=None, score=None):
        true, target = split_labels(y)
        ranked = logits.sort(dim=1, descending=True).values
        z_y = logits.gather(1, true.unsqueeze(1)).squeeze(1)
        if target is None:
            other = true_and_best_other(logits, true)[1]
            return -(z_y - other) / (ranked[:, 0] - ranked[:, 2] + 1e-12)
        z_t = logits.gather(1, target.unsqueeze(1)).squeeze(1)
        return -(z_y - z_t) / (ranked[:, 0] - (ranked[:, 2] + ranked[:, 3]) / 2 + 1e-12)


class LargestOther(Objective):
    name = "lkd"

    def __call__(self, logits, y, features=None, score=None):
        true, target = split_labels(y)
        if target is None:
            return true_and_best_other(logits, true)[1]
        return logits.gather(1, target.unsqueeze(1)).squeeze(1)


class Joint(Objective):
    """Misclassify and stay under the detector's threshold (see the module docstring)."""

    name = "joint"
    needs_features = True
    uses_detector = True

    def __init__(self, detector: Any, fpr: float = 0.05, detector_weight: float = 1.0) -> None:
        self.detector = detector
        self.fpr = fpr
        self.detector_weight = detector_weight
        # Calibrated once: the threshold is a constant of the threat model, not of the batch.
        self.threshold = float(detector.threshold(fpr))

    def __call__(self, logits, y, features=None, score=None):
        classifier, detector = self.parts(logits, y, features, score)
        return classifier.clamp(max=0.0) + self.detector_weight * detector

    def parts(self, logits: torch.Tensor, y: torch.Tensor, features: Optional[torch.Tensor] = None,
              score: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(classifier term, detector term), each to maximise: the (aimed) margin and
        ``-relu(score - threshold)``. Selective and orthogonal PGD step on one at a time."""
        if score is None:
            score = self.detector.score_from(features, logits)
        return aimed_margin(logits, y), -F.relu(score - self.threshold)

    def won(self, logits, y, features=None, score=None):
        """Misclassified and under the detector's threshold."""
        if score is None:
            score = self.detector.score_from(features, logits)
        return misclassified(logits, y) & ~(score > self.threshold)

    def params(self) -> Dict[str, Any]:
        name = getattr(self.detector, "name", None) or type(self.detector).__name__
        return {"detector": str(name), "fpr": self.fpr, "detector_weight": self.detector_weight,
                "threshold": self.threshold}


def make_objective(where: str, name: Any, options: Dict[str, Any]) -> Objective:
    """Build the objective ``name``; ``options`` are the joint objective's settings.

    Raises:
        UsageError: unknown name, a bad ``fpr`` / ``detector_weight``, a detector
            option without ``joint``, or ``joint`` without a detector.
    """
    check_choice(where, "objective", name, OBJECTIVES)
    given = {k: v for k, v in options.items() if v is not None}
    for key, declared in JOINT_RANGES.items():  # ranges first: a bad value is named as such
        if key in given:
            given[key] = declared.check(where, key, given[key])
    if name != "joint":
        if given:
            raise UsageError(f"{where}: {', '.join(sorted(given))}: used only by objective='joint', "
                             f"not {name!r}")
        return {"ce": CrossEntropy, "margin": Margin, "dlr": DLR, "lkd": LargestOther}[name]()
    detector = given.get("detector")
    if detector is None or not hasattr(detector, "score_from") or not hasattr(detector, "threshold"):
        raise UsageError(f"{where}: objective 'joint' needs detector=<a fitted detector with "
                         f"score_from(features, logits) and threshold(fpr)>")
    return Joint(detector, fpr=given.get("fpr", 0.05), detector_weight=given.get("detector_weight", 1.0))
