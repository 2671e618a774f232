"""``mahalanobis``: class-conditional Gaussians with one tied covariance.

Paper: Lee, Lee, Lee, Shin, "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS 2018,
https://arxiv.org/abs/1807.03888.

Fit: on the training split's penultimate features, one mean ``mu_c`` per
class and ONE covariance ``S`` shared by all classes (the pooled
within-class covariance). Score: the smallest squared Mahalanobis distance
to a class mean (minus the paper's confidence score ``M(x)``)::

    score(x) = min_c (f(x) - mu_c)^T S^+ (f(x) - mu_c)

``S^+`` is the pseudo-inverse, as in the paper's code (scikit-learn's
``pinvh``): computed in float64 from the eigen-decomposition, ignoring
directions whose variance is below ``1e-6`` of the largest, so dead or
collinear feature dimensions cannot blow the score up. Only the penultimate
features are used (the paper's single-layer variant, no feature ensemble).

Parameters:
    noise (0.0, in [0, 1]): magnitude of the paper's input pre-processing, in pixel units.
        When > 0, :meth:`score` first moves the input against the gradient of
        the distance, ``x' = clip(x - noise * sign(grad_x score(x)), 0, 1)``,
        and scores ``x'``. It is a fixed hyper-parameter: robench never tunes
        it on test data or on the attack. The step is :meth:`preprocess`;
        :meth:`score_from` does not include it, and white-box attacks go through
        it by BPDA (the real step's value, the identity's gradient).

Example::

    det = create_detector("mahalanobis", model).fit(x_train, y_train).calibrate(x_val)
    flagged = det.flag(det.score(x_adv), fpr=0.01)
"""

from __future__ import annotations

import torch

from robench.defenses.detectors.base import Detector
from robench.params import Range

RCOND = 1e-6  # eigenvalues below RCOND * largest count as zero variance


class Mahalanobis(Detector):
    """Smallest squared Mahalanobis distance to a class mean (tied covariance)."""

    name = "mahalanobis"
    defaults = {"noise": 0.0}
    ranges = {"noise": Range(float, 0, 1)}  # pixel units: beyond 1 every pixel is already clipped

    def _fit(self, features: torch.Tensor, y: torch.Tensor) -> None:
        f = features.double()
        classes, y_idx = torch.unique(y, return_inverse=True)
        means = torch.zeros(len(classes), f.shape[1], dtype=torch.float64).index_add_(0, y_idx, f)
        means /= torch.bincount(y_idx, minlength=len(classes)).unsqueeze(1)
        centered = f - means[y_idx]
        whitener = pinv_sqrt(centered.T @ centered / len(f))
        self.classes = classes
        self._whitener = whitener.float()  # (r, D): ||W (f - mu)||^2 is the distance
        self._white_means = (means @ whitener.T).float()  # (C, r)

    def score_from(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        return self._distances(features).min(dim=1).values

    def _distances(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) squared Mahalanobis distances to the fitted class means."""
        w = self._whitener.to(features.device, features.dtype)
        m = self._white_means.to(features.device, features.dtype)
        z = features @ w.T
        return (z.unsqueeze(1) - m.unsqueeze(0)).pow(2).sum(dim=2)

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return super()._score_batch(self.preprocess(x))

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """The paper's input step ``clip(x - noise * sign(grad_x score(x)), 0, 1)``; ``x`` itself when noise is 0."""
        eps = float(self.params["noise"])
        if eps <= 0:
            return x
        with torch.enable_grad():
            x_req = x.detach().requires_grad_(True)
            dist = self.score_from(self.model.features(x_req), None)
            (grad,) = torch.autograd.grad(dist.sum(), x_req)
        return (x.detach() - eps * grad.sign()).clamp(0.0, 1.0)


def pinv_sqrt(cov: torch.Tensor, rcond: float = RCOND) -> torch.Tensor:
    """W (r, D) with ``W^T W`` the pseudo-inverse of the symmetric PSD ``cov`` (D, D)."""
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > rcond * evals.max().clamp_min(torch.finfo(cov.dtype).tiny)
    return (evecs[:, keep] / evals[keep].sqrt()).T
