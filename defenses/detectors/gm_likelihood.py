"""``gm-likelihood``: the Gaussian-mixture likelihood detector of the GM-loss paper.

Paper: Wan, Zhong, Li, Chen, "Rethinking Feature Distribution for Loss
Functions in Image Classification", CVPR 2018, https://arxiv.org/abs/1803.02988
(section on adversarial verification). Official code:
https://github.com/jschenthu/GM-Loss.

Score: the negative log-likelihood of the feature under the Gaussian of the
predicted class, identity covariance, constants dropped::

    score(x) = min_k 1/2 ||f(x) - mu_k||^2 = -max_k logit_k(x)

computed from the GM head's logits (``-1/2 ||f - mu_k||^2``), so the score is
exactly what an attacker differentiating the logits sees. Only GM models have
class means; any other model is refused with a clear error.

Parameters: none. ``fit`` only checks its inputs (the means are the model's).

Example::

    det = create_detector("gm-likelihood", gm_model).fit(x_train, y_train).calibrate(x_val)
    flagged = det.flag(det.score(x_adv), fpr=0.05)
"""

from __future__ import annotations

import torch

from robench.defenses.detectors.base import Detector


class GMLikelihood(Detector):
    """Minus the largest GM logit: 1/2 the squared distance to the nearest class mean."""

    name = "gm-likelihood"
    requires_gm = True
    requires_fit = False

    def score_from(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return -logits.max(dim=1).values
