"""robench.metrics on hand-made arrays with answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from robench.metrics import METRIC_COLUMNS, bootstrap_auc, cell_metrics, tnr_at_tpr

T = {0.01: 3.5, 0.05: 2.5}


def _all_fooled(clean_score, adv_score, **kw):
    """n points, all correct when clean, all misclassified after the attack."""
    n = len(clean_score)
    y = np.arange(n) % 10
    return cell_metrics(y, y, (y + 1) % 10, np.asarray(clean_score, float),
                        np.asarray(adv_score, float), **kw)


def test_keys_are_metric_columns_in_order():
    m = _all_fooled([0, 1], [2, 3], thresholds=T, linf=[0.1, 0.2], l2=[1.0, 2.0])
    assert tuple(m) == METRIC_COLUMNS
    assert len(set(METRIC_COLUMNS)) == len(METRIC_COLUMNS)


def test_accuracies_and_success_rate():
    y = [0, 1, 2, 3]
    m = cell_metrics(y, clean_pred=[0, 1, 2, 0], adv_pred=[0, 0, 2, 0])
    assert m["n"] == 4 and m["n_successful"] == 1  # only point 1: correct, then fooled
    assert m["clean_acc"] == 0.75
    assert m["robust_acc"] == 0.5  # points 0 and 2, over ALL four points
    assert m["attack_success_rate"] == pytest.approx(1 / 3)


def test_no_detector_leaves_detection_metrics_nan():
    m = cell_metrics([0, 1], [0, 1], [1, 1])
    for key in ("auc", "auc_lo", "auc_hi", "auc_successful", "aupr", "tpr_at_fpr1", "fpr_at_fpr5",
                "tnr_at_tpr95", "det_robust_acc_fpr1", "det_robust_acc_fpr5", "mean_linf", "median_l2"):
        assert math.isnan(m[key]), key
    assert not math.isnan(m["robust_acc_lo"])


def test_perfectly_separated_scores():
    m = _all_fooled(np.arange(20), np.arange(100, 120), thresholds=T)
    for key in ("auc", "auc_successful", "aupr", "tnr_at_tpr95", "auc_lo", "auc_hi"):
        assert m[key] == 1.0, key
    assert m["tpr_at_fpr1"] == 1.0 and m["det_robust_acc_fpr5"] == 1.0


def test_identical_scores_are_chance():
    m = _all_fooled(np.ones(20), np.ones(20), thresholds=T)
    assert m["auc"] == 0.5 and m["auc_successful"] == 0.5
    assert m["aupr"] == 0.5  # every threshold keeps all points: precision = positive share
    assert m["tnr_at_tpr95"] == 0.0


def test_reversed_scores_give_auc_zero():
    assert _all_fooled([5, 6], [1, 2])["auc"] == 0.0


def test_tpr_counts_scores_strictly_above_the_val_threshold():
    # successful scores 1, 2, 2.5, 3.6: above 3.5 -> 1 of 4; above 2.5 -> 1 (2.5 itself is not flagged)
    m = _all_fooled([0, 0, 0, 0], [1, 2, 2.5, 3.6], thresholds=T)
    assert m["tpr_at_fpr1"] == 0.25 and m["tpr_at_fpr5"] == 0.25


def test_tpr_and_aupr_use_successful_examples_auc_uses_all():
    y = [0, 1, 2, 3]
    # points 0, 1 fooled (adv scores 4, 0); point 2's attack failed (adv score 9); point 3 wrong when clean
    m = cell_metrics(y, clean_pred=[0, 1, 2, 0], adv_pred=[1, 2, 2, 0],
                     clean_score=[1, 1, 1, 100], adv_score=[4, 0, 9, 0], thresholds=T)
    assert m["tpr_at_fpr1"] == 0.5  # of the successful {4, 0}, only 4 > 3.5
    assert m["auc_successful"] == 0.5  # {4, 0} vs clean {1, 1, 1}: one above, one below
    assert m["auc"] == pytest.approx(2 / 3)  # {4, 0, 9} vs {1, 1, 1}
    # fpr is measured on ALL clean test points, the misclassified point 3 (score 100) included
    assert m["fpr_at_fpr1"] == 0.25 and m["fpr_at_fpr5"] == 0.25


def test_det_robust_acc_counts_correct_or_flagged():
    y = [0, 1, 2, 3, 4]
    adv_pred = [0, 9, 9, 9, 4]  # correct after the attack: points 0 and 4
    adv_score = [0, 5, 3, 1, 0]  # > 3.5: point 1; > 2.5: points 1 and 2
    m = cell_metrics(y, y, adv_pred, clean_score=[0] * 5, adv_score=adv_score, thresholds=T)
    assert m["det_robust_acc_fpr1"] == pytest.approx(3 / 5)  # 0, 4 correct + 1 flagged
    assert m["det_robust_acc_fpr5"] == pytest.approx(4 / 5)  # ... + 2 flagged
    assert m["robust_acc"] == pytest.approx(2 / 5)


def test_missing_threshold_leaves_its_columns_nan():
    m = _all_fooled([0, 0], [3, 4], thresholds={0.05: 2.5})
    assert math.isnan(m["tpr_at_fpr1"]) and math.isnan(m["det_robust_acc_fpr1"])
    assert m["tpr_at_fpr5"] == 1.0


def test_no_successful_examples():
    y = [0, 1, 2]
    m = cell_metrics(y, y, y, clean_score=[0, 1, 2], adv_score=[3, 4, 5], thresholds=T,
                     linf=[0.3, 0.3, 0.3], l2=[1, 1, 1])
    assert m["n_successful"] == 0 and m["attack_success_rate"] == 0.0
    assert m["auc"] == 1.0  # failed adversarial examples still count for auc
    for key in ("auc_successful", "aupr", "tpr_at_fpr1", "tnr_at_tpr95", "mean_linf", "median_l2"):
        assert math.isnan(m[key]), key


def test_perturbation_norms_are_over_successful_examples():
    y = [0, 1, 2, 3]
    m = cell_metrics(y, y, adv_pred=[9, 9, 9, 3], linf=[0.1, 0.2, 0.6, 0.9], l2=[1, 2, 6, 100])
    assert m["mean_linf"] == pytest.approx(0.3) and m["median_linf"] == pytest.approx(0.2)
    assert m["mean_l2"] == pytest.approx(3.0) and m["median_l2"] == 2.0


def test_tnr_at_tpr95_by_hand():
    neg = np.arange(10.0)
    # 19 of 20 positives at 100: flagging them alone reaches TPR 0.95 with no false positive
    assert tnr_at_tpr(neg, np.r_[np.full(19, 100.0), 5.5]) == 1.0
    # 18 of 20 at 100: TPR 0.95 needs a 5.5 flagged, which flags clean 6..9 too
    assert tnr_at_tpr(neg, np.r_[np.full(18, 100.0), 5.5, 5.5]) == pytest.approx(0.6)


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    rng = np.random.default_rng(1)
    n = 300
    y = rng.integers(0, 10, n)
    adv_pred = np.where(rng.random(n) < 0.4, y, (y + 1) % 10)
    clean, adv = rng.normal(size=n), rng.normal(1.0, size=n)
    a = cell_metrics(y, y, adv_pred, clean, adv, T, seed=3)
    b = cell_metrics(y, y, adv_pred, clean, adv, T, seed=3)
    c = cell_metrics(y, y, adv_pred, clean, adv, T, seed=4)
    assert a == b and a["auc_lo"] != c["auc_lo"]
    assert a["robust_acc_lo"] < a["robust_acc"] < a["robust_acc_hi"]
    assert a["auc_lo"] < a["auc"] < a["auc_hi"]
    assert a["robust_acc_hi"] - a["robust_acc_lo"] < 0.15


def test_bootstrap_auc_equals_sklearn_on_each_resample_with_ties():
    rng = np.random.default_rng(0)
    neg, pos = rng.integers(0, 5, 40).astype(float), rng.integers(1, 6, 40).astype(float)
    got = bootstrap_auc(neg, pos, 5, np.random.default_rng(7))
    idx = np.random.default_rng(7).integers(0, 40, size=(5, 40))
    want = [roc_auc_score(np.r_[np.zeros(40), np.ones(40)], np.r_[neg[i], pos[i]]) for i in idx]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_accepts_tensors_and_infinite_scores():
    y = torch.tensor([0, 1, 2])
    m = cell_metrics(y, y, torch.tensor([1, 2, 0]), torch.tensor([0.0, 1.0, 2.0]),
                     torch.tensor([float("inf"), 5.0, 6.0], requires_grad=True), T)
    assert m["auc"] == 1.0 and m["tpr_at_fpr1"] == 1.0


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="adv_pred has 2 entries"):
        cell_metrics([0, 1, 2], [0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        cell_metrics([0], [0], [1], [0.0], [float("nan")])


def test_empty_cell_is_all_nan_but_counts():
    m = cell_metrics([], [], [], [], [], T)
    assert m["n"] == 0 and m["n_successful"] == 0
    assert all(math.isnan(m[k]) for k in METRIC_COLUMNS if k not in ("n", "n_successful"))
