"""``max-softmax``: the maximum-softmax-probability baseline.

Paper: Hendrycks, Gimpel, "A Baseline for Detecting Misclassified and
Out-of-Distribution Examples in Neural Networks", ICLR 2017,
https://arxiv.org/abs/1610.02136.

Score: ``1 - max_k softmax(logits)_k`` (0 for a fully confident prediction,
at most ``1 - 1/K``). Works on any model; on a GM model the softmax of the GM
logits is the class posterior.

Parameters: none. ``fit`` only checks its inputs.

Example::

    det = create_detector("max-softmax", model).fit(x_train, y_train).calibrate(x_val)
    scores = det.score(x_adv)
"""

from __future__ import annotations

import torch

from robench.defenses.detectors.base import Detector


class MaxSoftmax(Detector):
    """One minus the largest softmax probability."""

    name = "max-softmax"
    requires_fit = False

    def score_from(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # -expm1(log p_max) == 1 - p_max, without rounding confident inputs to a tie at 0
        return -torch.expm1(logits.log_softmax(dim=1).max(dim=1).values)
