"""Detectors: score inputs, higher = more adversarial (registry kind ``detectors``).

Built-ins (entry points in setup.cfg, group ``robench.detectors``):
``gm-likelihood``, ``mahalanobis``, ``kd``, ``max-softmax``. Each module is
imported only when its detector is created, so importing this package costs
no more than torch.

    from robench.defenses.detectors import create_detector
    det = create_detector("auto", model).fit(x_train, y_train).calibrate(x_val)
    flagged = det.flag(det.score(x_adv), fpr=0.05)
"""

from __future__ import annotations

from typing import Any

from robench.defenses.detectors.base import Detector, calibrate_threshold
from robench.models import RobustModel
from robench.registry import registry

__all__ = ["Detector", "calibrate_threshold", "create_detector", "auto_detector_name"]


def auto_detector_name(model: RobustModel) -> str:
    """``gm-likelihood`` for GM models, ``mahalanobis`` for every other model."""
    return "gm-likelihood" if model.is_gm else "mahalanobis"


def create_detector(name: str, model: RobustModel, **params: Any) -> Detector:
    """Build a registered detector for ``model``; ``auto`` picks by :func:`auto_detector_name`.

    Unknown names raise the registry's error, which suggests the nearest names.
    """
    if name == "auto":
        name = auto_detector_name(model)
    cls = registry("detectors").get(name)
    return cls(model, **params)
