"""The interface every detector implements, and the invariants it owns.

A detector scores inputs (higher = more adversarial). It is fitted on the
training split, its thresholds are calibrated on *clean* validation scores,
and test data never touches either. Subclasses set ``name`` and ``defaults``
and implement :meth:`Detector.score_from`; the base class does batching,
devices, eval mode, parameter checking and thresholds.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, ClassVar, Dict, Iterator, Sequence

import torch

from robench.errors import DataError, RobenchError, UsageError
from robench.metrics import CALIBRATION_FPRS
from robench.models import RobustModel
from robench.params import Range, check_known, check_params, is_number

DEFAULT_FPRS = CALIBRATION_FPRS  # the rates the metrics report (fpr1, fpr5)


def calibrate_threshold(clean_scores: torch.Tensor, fpr: float) -> float:
    """The smallest threshold that flags at most ``fpr`` of ``clean_scores``.

    A score is flagged when it is strictly greater than the threshold. With
    ``n`` clean scores sorted ascending and ``k = floor(fpr * n)``, the
    threshold is the ``(n - k)``-th smallest score, so at most ``k`` clean
    scores (fewer with ties) lie above it.
    """
    if not 0.0 < fpr < 1.0:
        raise UsageError(f"fpr must be in (0, 1), got {fpr}")
    scores = torch.as_tensor(clean_scores, dtype=torch.float64).flatten()
    if scores.numel() == 0:
        raise DataError("cannot calibrate a detector threshold on zero clean scores")
    if torch.isnan(scores).any():
        raise DataError("cannot calibrate a detector threshold: clean scores contain NaN")
    n = scores.numel()
    k = math.floor(fpr * n + 1e-9)  # the epsilon keeps 0.01 * 500 from flooring to 4
    return float(scores.sort().values[n - k - 1])


def model_label(model: RobustModel) -> str:
    """How errors name a model: its file stem, else defense/arch."""
    info = model.info
    return info.name or f"{info.defense}/{info.arch}"


class Detector:
    """Scores inputs of a :class:`~robench.models.RobustModel`; higher = more adversarial.

    Args:
        model: the frozen model whose features and logits are scored.
        **params: the detector's hyper-parameters (see ``defaults``); unknown
            names are a :class:`~robench.errors.UsageError`.
    """

    name: ClassVar[str] = ""
    requires_gm: ClassVar[bool] = False
    requires_fit: ClassVar[bool] = True  # False: fit() only checks its inputs
    defaults: ClassVar[Dict[str, Any]] = {}
    ranges: ClassVar[Dict[str, Range]] = {}  # one per numeric parameter, checked on construction

    def __init__(self, model: RobustModel, **params: Any) -> None:
        where = f"detector {self.name}"
        check_known(where, params, list(self.defaults), "parameter")
        self.params: Dict[str, Any] = {**self.defaults, **params}
        for key, value in self.params.items():
            self._check_number(key, value)
        self.params = check_params(where, self.params, self.ranges)
        if self.requires_gm and not model.is_gm:
            raise RobenchError(
                f"detector {self.name} needs a Gaussian-mixture (GM) model; model "
                f"'{model_label(model)}' (defense {model.info.defense}) is not GM")
        self.model = model
        self.fitted = False
        self._thresholds: Dict[float, float] = {}

    def _check_number(self, key: str, value: Any) -> None:
        """The type check of a numeric parameter without a declared range (a plugin's)."""
        if key not in self.ranges and is_number(self.defaults[key]):
            if not (is_number(value) and math.isfinite(value)):
                raise UsageError(f"detector {self.name}: {key} must be a finite number, got {value!r}")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({params})"

    # -- fitting and calibration ------------------------------------------------
    def fit(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> "Detector":
        """Fit on training-split images in [0, 1] and their labels; returns ``self``."""
        _check_images(x, "fit")
        y = torch.as_tensor(y)
        if y.dim() != 1 or len(y) != len(x):
            raise DataError(f"detector fit: {len(x)} images but labels of shape {tuple(y.shape)}")
        if len(x) == 0:
            raise DataError(f"detector {self.name}: cannot fit on zero training images")
        if self.requires_fit:
            with self._eval_mode(), torch.no_grad():
                feats = _batched(self.model.features, x, batch_size, self.model.device)
            self._fit(feats, y.long().cpu())
        self.fitted = True
        self._thresholds = {}  # thresholds of an earlier fit no longer apply
        return self

    def _fit(self, features: torch.Tensor, y: torch.Tensor) -> None:
        """Fit on (N, D) CPU training features and labels; detectors with statistics override."""

    def calibrate(self, x_val: torch.Tensor, fprs: Sequence[float] = DEFAULT_FPRS,
                  batch_size: int = 256) -> "Detector":
        """Set one threshold per false-positive rate from CLEAN validation images; returns ``self``."""
        scores = self.score(x_val, batch_size)
        self._thresholds = {float(f): calibrate_threshold(scores, float(f)) for f in fprs}
        return self

    @property
    def thresholds(self) -> Dict[float, float]:
        """Calibrated thresholds keyed by false-positive rate (a copy)."""
        return dict(self._thresholds)

    def threshold(self, fpr: float) -> float:
        """The threshold calibrated for ``fpr``."""
        if not self._thresholds:
            raise RobenchError(f"detector {self.name} is not calibrated: call calibrate(x_val) first")
        for key, value in self._thresholds.items():
            if math.isclose(key, fpr, rel_tol=1e-9, abs_tol=1e-12):
                return value
        known = ", ".join(f"{k:g}" for k in self._thresholds)
        raise RobenchError(f"detector {self.name} has no threshold for fpr={fpr:g} (calibrated: {known})")

    # -- scoring -------------------------------------------------------------------
    def score(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """(N,) float scores on CPU, without gradients; higher = more adversarial."""
        _check_images(x, "score")
        self._check_fitted()
        with self._eval_mode():
            return _batched(self._score_batch, x, batch_size, self.model.device).float()

    def _check_fitted(self) -> None:
        if self.requires_fit and not self.fitted:
            raise RobenchError(f"detector {self.name} is not fitted: call fit(x_train, y_train) first")

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.score_from(*self.model.features_and_logits(x))

    def score_from(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(N,) scores from (N, D) features and (N, K) logits, differentiable, on their device.

        Adaptive (white-box) attacks back-propagate through this.
        """
        raise NotImplementedError

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """The detector's own input step before scoring (identity: returns ``x`` itself).

        :meth:`score` scores ``preprocess(x)``. A step that is not differentiable
        (or not meant to be) is attacked through a straight-through estimate of it
        (BPDA: ``x + (preprocess(x) - x).detach()``), so white-box attacks optimise
        the function :meth:`score` really computes; see :mod:`robench.attacks.adaptive`.
        """
        return x

    def flag(self, scores: torch.Tensor, fpr: float) -> torch.Tensor:
        """Boolean mask of scores above the threshold calibrated for ``fpr``."""
        return torch.as_tensor(scores) > self.threshold(fpr)

    @contextlib.contextmanager
    def _eval_mode(self) -> Iterator[None]:
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)


def _check_images(x: torch.Tensor, where: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"detector {where}: expected float images (N, C, H, W), got {shape}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise DataError(f"detector {where}: images must lie in [0, 1], "
                        f"got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")


def _batched(fn, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``fn`` over batches of ``x`` on ``device``, concatenated on CPU (detached)."""
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    outs = [fn(xb.to(device)).detach().cpu() for xb in x.split(batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)
