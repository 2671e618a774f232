"""The metrics of one result cell (model, attack, eps, threat, detector) from per-sample arrays.

Positive = adversarial. ROC, AUC and average precision come from
scikit-learn (imported when first needed). Every value is a plain float or
int, NaN where undefined (no detector, no correctly classified point, no
successful adversarial example).

Sets used below, over the ``n`` test points:

* ``correct``: points classified correctly when clean.
* ``successful``: correct points whose adversarial example is misclassified.
* a score is *flagged* at a false-positive rate when it is strictly above the
  threshold calibrated for that rate on CLEAN validation scores (the rule of
  ``Detector.flag``); test data never sets a threshold.

Columns, in :data:`METRIC_COLUMNS` order:

* ``n``, ``n_successful``: the counts of test points and of successful examples.
* ``clean_acc``: fraction of points classified correctly when clean.
* ``robust_acc`` (``_lo``, ``_hi``): fraction of ALL points whose adversarial
  example is classified correctly, with a bootstrap 95% interval.
* ``attack_success_rate``: ``n_successful / |correct|``.
* ``auc`` (``_lo``, ``_hi``): ROC AUC of the clean scores of ``correct``
  (negatives) against the adversarial scores of ALL ``correct`` points
  (positives, failed attacks included), with a bootstrap 95% interval.
* ``auc_successful``: the same negatives against successful examples only.
* ``aupr``: average precision, negatives as above, positives = successful
  examples.
* ``tpr_at_fpr1``, ``tpr_at_fpr5``: fraction of successful examples flagged
  at the 1% / 5% validation thresholds.
* ``fpr_at_fpr1``, ``fpr_at_fpr5``: fraction of ALL clean test points flagged
  at those thresholds; close to 0.01 / 0.05 when calibration transfers.
* ``tnr_at_tpr95``: on the test set (an oracle threshold, for comparison with
  the literature), the largest fraction of clean ``correct`` scores below a
  threshold that still flags at least 95% of successful examples.
* ``det_robust_acc_fpr1``, ``det_robust_acc_fpr5``: fraction of ALL points
  whose adversarial example is classified correctly OR flagged (the GM
  authors' protocol; the thresholds keep 99% / 95% of clean val points).
* ``mean_linf``, ``median_linf``, ``mean_l2``, ``median_l2``: sizes of the
  perturbations of the SUCCESSFUL examples (the perturbation that fooled the
  model; failed and untouched points would only blur them).

Bootstrap (one seeded ``numpy.random.Generator``, ``n_boot`` resamples with
replacement, percentile intervals 2.5-97.5): ``robust_acc`` resamples the
``n`` test points; ``auc`` resamples the ``correct`` points, keeping each
point's clean and adversarial scores together (the interval is conditional on
which points were classified correctly). Both are vectorised: multinomial
counts for the accuracy, SciPy's Mann-Whitney U (equal to scikit-learn's ROC
AUC, ties included) for the AUC.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

CALIBRATION_FPRS = (0.01, 0.05)
_FPR_TAGS = {0.01: "fpr1", 0.05: "fpr5"}

METRIC_COLUMNS: Tuple[str, ...] = (
    "n", "n_successful", "clean_acc", "robust_acc", "robust_acc_lo", "robust_acc_hi",
    "attack_success_rate", "auc", "auc_lo", "auc_hi", "auc_successful", "aupr",
    "tpr_at_fpr1", "tpr_at_fpr5", "fpr_at_fpr1", "fpr_at_fpr5", "tnr_at_tpr95",
    "det_robust_acc_fpr1", "det_robust_acc_fpr5",
    "mean_linf", "median_linf", "mean_l2", "median_l2",
)

NAN = float("nan")


def cell_metrics(y: Any, clean_pred: Any, adv_pred: Any,
                 clean_score: Optional[Any] = None, adv_score: Optional[Any] = None,
                 thresholds: Optional[Mapping[float, float]] = None,
                 linf: Optional[Any] = None, l2: Optional[Any] = None,
                 seed: int = 0, n_boot: int = 200) -> Dict[str, float]:
    """All :data:`METRIC_COLUMNS` of one cell (definitions in the module docstring).

    Args:
        y: (n,) true labels.
        clean_pred: (n,) predictions on the clean inputs.
        adv_pred: (n,) predictions on the adversarial examples.
        clean_score: (n,) detector scores of the clean inputs, or None.
        adv_score: (n,) detector scores of the adversarial examples, or None.
        thresholds: ``{fpr: threshold}`` calibrated on clean validation data;
            the 0.01 and 0.05 entries are used.
        linf: (n,) L-inf norms of ``x_adv - x`` (pixel units), or None.
        l2: (n,) L2 norms of ``x_adv - x``, or None.
        seed: seed of the bootstrap's generator.
        n_boot: number of bootstrap resamples.

    Inputs may be numpy arrays, lists or CPU/GPU tensors.
    """
    y, clean_pred, adv_pred = _arr(y), _arr(clean_pred), _arr(adv_pred)
    n = len(y)
    _same_length(n, clean_pred=clean_pred, adv_pred=adv_pred)
    correct = clean_pred == y
    adv_correct = adv_pred == y
    successful = correct & ~adv_correct
    out: Dict[str, float] = dict.fromkeys(METRIC_COLUMNS, NAN)
    out.update(n=n, n_successful=int(successful.sum()), clean_acc=_mean(correct),
               robust_acc=_mean(adv_correct),
               attack_success_rate=_ratio(successful.sum(), correct.sum()))
    out.update(_norms(linf, l2, successful, n))
    rng = np.random.default_rng(seed)
    counts = bootstrap_counts(n, n_boot, rng)
    out["robust_acc_lo"], out["robust_acc_hi"] = _interval(counts @ adv_correct / max(n, 1))
    if clean_score is not None and adv_score is not None:
        clean_score, adv_score = _score(clean_score), _score(adv_score)
        _same_length(n, clean_score=clean_score, adv_score=adv_score)
        out.update(_detection(clean_score, adv_score, correct, successful, adv_correct,
                              thresholds or {}, n_boot, rng))
    return out


def _detection(clean: np.ndarray, adv: np.ndarray, correct: np.ndarray, successful: np.ndarray,
               adv_correct: np.ndarray, thresholds: Mapping[float, float],
               n_boot: int, rng: np.random.Generator) -> Dict[str, float]:
    out = {
        "auc": roc_auc(clean[correct], adv[correct]),
        "auc_successful": roc_auc(clean[correct], adv[successful]),
        "aupr": average_precision(clean[correct], adv[successful]),
        "tnr_at_tpr95": tnr_at_tpr(clean[correct], adv[successful], 0.95),
    }
    out["auc_lo"], out["auc_hi"] = _interval(bootstrap_auc(clean[correct], adv[correct], n_boot, rng))
    for fpr, tag in _FPR_TAGS.items():
        t = _lookup(thresholds, fpr)
        if t is None:
            continue
        out[f"tpr_at_{tag}"] = _mean(adv[successful] > t)
        out[f"fpr_at_{tag}"] = _mean(clean > t)
        out[f"det_robust_acc_{tag}"] = _mean(adv_correct | (adv > t))
    return out


# -- detection measures (scikit-learn) ------------------------------------------

def _labelled(neg: np.ndarray, pos: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    labels = np.concatenate([np.zeros(len(neg)), np.ones(len(pos))])
    return labels, np.concatenate([neg, pos])


def roc_auc(neg: np.ndarray, pos: np.ndarray) -> float:
    """ROC AUC of positives (adversarial) against negatives (clean); NaN if either is empty."""
    if len(neg) == 0 or len(pos) == 0:
        return NAN
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(*_labelled(neg, pos)))


def average_precision(neg: np.ndarray, pos: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision), positive = adversarial."""
    if len(neg) == 0 or len(pos) == 0:
        return NAN
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(*_labelled(neg, pos)))


def tnr_at_tpr(neg: np.ndarray, pos: np.ndarray, tpr: float = 0.95) -> float:
    """The best true-negative rate among ROC points whose true-positive rate is >= ``tpr``."""
    if len(neg) == 0 or len(pos) == 0:
        return NAN
    from sklearn.metrics import roc_curve

    fprs, tprs, _ = roc_curve(*_labelled(neg, pos), drop_intermediate=False)
    return float(1.0 - fprs[tprs >= tpr - 1e-12].min())


# -- bootstrap ------------------------------------------------------------------

def bootstrap_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) counts of each point in resamples with replacement of ``n`` points."""
    if n == 0 or n_boot <= 0:
        return np.zeros((0, n))
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def bootstrap_auc(neg: np.ndarray, pos: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """ROC AUC of ``n_boot`` resamples of the (neg[i], pos[i]) pairs, vectorised.

    Uses SciPy's Mann-Whitney U: ``U / (n_pos * n_neg)`` is exactly the ROC AUC
    scikit-learn computes (ties count one half), for all resamples at once.
    """
    m = len(neg)
    if m == 0 or n_boot <= 0:
        return np.full(max(n_boot, 0), NAN)
    from scipy.stats import mannwhitneyu

    idx = rng.integers(0, m, size=(n_boot, m))
    u = mannwhitneyu(pos[idx], neg[idx], axis=1, method="asymptotic", use_continuity=False).statistic
    return np.asarray(u, dtype=np.float64) / (m * m)


def _interval(values: np.ndarray) -> Tuple[float, float]:
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return NAN, NAN
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


# -- small helpers ----------------------------------------------------------------

def _norms(linf: Optional[Any], l2: Optional[Any], successful: np.ndarray, n: int) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for tag, values in (("linf", linf), ("l2", l2)):
        if values is None:
            continue
        values = _arr(values).astype(np.float64)
        _same_length(n, **{tag: values})
        chosen = values[successful]
        out[f"mean_{tag}"] = float(chosen.mean()) if len(chosen) else NAN
        out[f"median_{tag}"] = float(np.median(chosen)) if len(chosen) else NAN
    return out


def _lookup(thresholds: Mapping[float, float], fpr: float) -> Optional[float]:
    for key, value in thresholds.items():
        if math.isclose(float(key), fpr, rel_tol=1e-9):
            return float(value)
    return None


def _arr(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor, possibly on a GPU
        a = a.detach().cpu().numpy()
    return np.asarray(a).reshape(-1)


def _score(a: Any) -> np.ndarray:
    """Scores as float64; +-inf become the largest finite values so ranks survive scikit-learn."""
    s = _arr(a).astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("detector scores contain NaN")
    return np.nan_to_num(s, posinf=np.finfo(np.float64).max, neginf=np.finfo(np.float64).min)


def _same_length(n: int, **arrays: np.ndarray) -> None:
    for name, a in arrays.items():
        if len(a) != n:
            raise ValueError(f"{name} has {len(a)} entries, expected {n} (one per test point)")


def _mean(mask: np.ndarray) -> float:
    return float(mask.mean()) if len(mask) else NAN


def _ratio(num: Any, den: Any) -> float:
    return float(num) / float(den) if den else NAN
