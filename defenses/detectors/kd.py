"""``kd``: kernel density of the predicted class's training features.

Paper: Feinman, Curtin, Shintre, Gardner, "Detecting Adversarial Samples from
Artifacts", 2017, https://arxiv.org/abs/1703.00410 (the density half; the
Bayesian-uncertainty half is not included).

Fit: keep the training-split penultimate features of each class, at most
``max_per_class`` of them (a seeded, deterministic subset). Score: minus the
log of the Gaussian kernel density estimate of the predicted class ``t``
(the same quantity as scikit-learn's ``KernelDensity.score_samples``)::

    score(x) = -log( 1/n_t sum_{i in t} N(f(x); f_i, h^2 I) )

computed with logsumexp, so far-away inputs get large finite scores instead
of ``-log 0``. A predicted class with no training points scores ``+inf``.

Parameters:
    bandwidth (1.0): the kernel width ``h``, in feature units. Features are
        used as the model gives them (not standardised), and 1.0 suits
        features with about unit spread per dimension; Feinman et al. used
        1.20 (MNIST), 0.26 (CIFAR-10) and 1.00 (SVHN) on their networks.
        Choose it from training/validation data, never from the attack.
    max_per_class (500): training points kept per class, for speed.
    seed (0): seed of the local generator that picks them.

Example::

    det = create_detector("kd", model, bandwidth=2.0).fit(x_train, y_train).calibrate(x_val)
    scores = det.score(x_adv)
"""

from __future__ import annotations

import math

import torch

from robench.archs import squared_distances
from robench.defenses.detectors.base import Detector
from robench.errors import DataError
from robench.params import Range


class KernelDensity(Detector):
    """Minus the log Gaussian kernel density under the predicted class."""

    name = "kd"
    defaults = {"bandwidth": 1.0, "max_per_class": 500, "seed": 0}
    ranges = {"bandwidth": Range(float, 0, low_open=True), "max_per_class": Range(int, 1), "seed": Range(int, 0)}

    def _fit(self, features: torch.Tensor, y: torch.Tensor) -> None:
        k = self.model.num_classes
        if int(y.max()) >= k or int(y.min()) < 0:
            raise DataError(f"detector {self.name}: labels must be in [0, {k - 1}]")
        gen = torch.Generator().manual_seed(self.params["seed"])
        keep = []
        for c in range(k):
            idx = (y == c).nonzero().flatten()
            if len(idx) > self.params["max_per_class"]:
                pick = torch.randperm(len(idx), generator=gen)[: self.params["max_per_class"]]
                idx = idx[pick.sort().values]
            keep.append(idx)
        keep_idx = torch.cat(keep)
        self._bank = features[keep_idx].float()  # (M, D)
        self._bank_labels = y[keep_idx]
        counts = torch.bincount(self._bank_labels, minlength=k).double()
        # an empty class keeps log n = 0 so its log density is -inf, i.e. score +inf, not NaN
        self._log_counts = counts.clamp_min(1).log().float()

    def score_from(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        self._check_fitted()
        dev, dt = features.device, features.dtype
        bank = self._bank.to(dev, dt)
        h = float(self.params["bandwidth"])
        pred = logits.argmax(dim=1)
        log_kernel = -squared_distances(features, bank) / (2.0 * h * h)  # (N, M)
        other_class = self._bank_labels.to(dev).unsqueeze(0) != pred.unsqueeze(1)
        log_sum = log_kernel.masked_fill(other_class, float("-inf")).logsumexp(dim=1)
        log_norm = 0.5 * features.shape[1] * math.log(2.0 * math.pi * h * h)
        log_density = log_sum - self._log_counts.to(dev, dt)[pred] - log_norm
        return -log_density
