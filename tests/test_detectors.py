"""Detectors on the tiny digits models: fitting, calibration, scores and their gradients."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from robench.defenses.detectors import calibrate_threshold, create_detector
from robench.errors import DataError, RobenchError, UnknownNameError, UsageError
from robench.registry import registry

DETECTORS = registry("detectors").names()
GM_ONLY = {name for name in DETECTORS if registry("detectors").get(name).requires_gm}
CASES = [(name, "gm_model") for name in DETECTORS] + \
        [(name, "softmax_model") for name in DETECTORS if name not in GM_ONLY]


@pytest.fixture(scope="module")
def splits(digits):
    return {name: digits.split(name) for name in ("train", "val", "test")}


@pytest.fixture(scope="module")
def fitted(request, splits):
    """Each (detector, model) case fitted on train and calibrated on val, built once."""
    cache = {}

    def get(name, model_fixture):
        if (name, model_fixture) not in cache:
            model = request.getfixturevalue(model_fixture)
            det = create_detector(name, model).fit(*splits["train"])
            cache[name, model_fixture] = det.calibrate(splits["val"][0])
        return cache[name, model_fixture]

    return get


def noise_images(n=128, seed=0):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_builtins_are_registered():
    assert {"gm-likelihood", "mahalanobis", "kd", "max-softmax"} <= set(DETECTORS)
    assert GM_ONLY == {"gm-likelihood"}


@pytest.mark.parametrize("name,model_fixture", CASES)
def test_calibration_holds_on_val(name, model_fixture, fitted, splits):
    det = fitted(name, model_fixture)
    val_scores = det.score(splits["val"][0])
    n = len(val_scores)
    for fpr in (0.01, 0.05):
        rate = det.flag(val_scores, fpr).float().mean().item()
        assert rate <= fpr + 1e-9 and rate >= fpr - 1.0 / n
    assert det.threshold(0.01) >= det.threshold(0.05)


@pytest.mark.parametrize("name,model_fixture", CASES)
def test_score_shape_dtype_device(name, model_fixture, fitted, digits_batch):
    scores = fitted(name, model_fixture).score(digits_batch[0], batch_size=50)
    assert scores.shape == (len(digits_batch[0]),) and scores.dtype == torch.float32
    assert scores.device.type == "cpu" and not scores.requires_grad
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name,model_fixture", CASES)
def test_score_from_matches_score_and_is_differentiable(name, model_fixture, fitted, digits_batch):
    det = fitted(name, model_fixture)
    x = digits_batch[0][:32].clone().requires_grad_(True)
    features, logits = det.model.features_and_logits(x)
    s = det.score_from(features, logits)
    torch.testing.assert_close(s.detach(), det.score(x.detach()), rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(s.sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("name,model_fixture", CASES)
def test_noise_scores_higher_than_clean_digits(name, model_fixture, fitted, digits_batch):
    det = fitted(name, model_fixture)
    assert det.score(noise_images()).mean() > det.score(digits_batch[0]).mean()


def test_gm_likelihood_refuses_a_softmax_model(softmax_model):
    with pytest.raises(RobenchError, match="not GM") as err:
        create_detector("gm-likelihood", softmax_model)
    assert "softmax" in str(err.value)


def test_auto_picks_by_head(gm_model, softmax_model):
    assert create_detector("auto", gm_model).name == "gm-likelihood"
    assert create_detector("auto", softmax_model).name == "mahalanobis"


def test_unknown_name_and_parameters(softmax_model):
    with pytest.raises(UnknownNameError, match="did you mean mahalanobis"):
        create_detector("mahalanobi", softmax_model)
    with pytest.raises(UsageError, match="unknown parameter"):
        create_detector("kd", softmax_model, bandwith=1.0)
    for name, bad in (("kd", {"bandwidth": 0}), ("kd", {"bandwidth": "wide"}),
                      ("kd", {"max_per_class": 2.5}), ("mahalanobis", {"noise": -0.1})):
        with pytest.raises(UsageError):
            create_detector(name, softmax_model, **bad)


def test_thresholds_and_fitting_are_checked(softmax_model, splits):
    det = create_detector("mahalanobis", softmax_model)
    with pytest.raises(RobenchError, match="not fitted"):
        det.score(splits["val"][0])
    x, y = splits["train"]
    with pytest.raises(DataError):
        det.fit(x, y[:-1])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        det.fit(x * 255, y)
    det.fit(x[:300], y[:300])
    with pytest.raises(RobenchError, match="not calibrated"):
        det.threshold(0.05)
    det.calibrate(splits["val"][0], fprs=(0.05,))
    with pytest.raises(RobenchError, match="no threshold for fpr=0.01"):
        det.threshold(0.01)


def test_calibrate_threshold_flags_floor_fpr_n():
    assert calibrate_threshold(torch.arange(100.0), 0.05) == 94.0  # 95..99 lie above it
    assert calibrate_threshold(torch.arange(500.0), 0.01) == 494.0  # 0.01 * 500 is 5, not 4
    assert calibrate_threshold(torch.arange(50.0), 0.01) == 49.0  # nothing may be flagged
    with pytest.raises(UsageError):
        calibrate_threshold(torch.arange(5.0), 1.0)


# -- each score against its definition ---------------------------------------------

def test_gm_likelihood_is_half_squared_distance_to_nearest_mean(gm_model, digits_batch):
    x = digits_batch[0][:16]
    with torch.no_grad():
        f = gm_model.features(x)
    want = 0.5 * torch.cdist(f, gm_model.mu).pow(2).min(dim=1).values
    got = create_detector("gm-likelihood", gm_model).score(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_max_softmax_is_one_minus_top_probability(softmax_model, digits_batch):
    x = digits_batch[0][:16]
    with torch.no_grad():
        want = 1 - softmax_model(x).softmax(1).max(1).values
    torch.testing.assert_close(create_detector("max-softmax", softmax_model).score(x), want,
                               rtol=1e-4, atol=1e-6)


def _features(model, x):
    with torch.no_grad():
        return model.features(x).double().numpy()


def test_mahalanobis_matches_sklearn_tied_covariance(softmax_model, splits, fitted, digits_batch):
    from sklearn.covariance import EmpiricalCovariance

    (x_tr, y_tr), x = splits["train"], digits_batch[0][:16]
    f_tr, f, y_tr = _features(softmax_model, x_tr), _features(softmax_model, x), y_tr.numpy()
    means = np.stack([f_tr[y_tr == c].mean(0) for c in range(10)])
    cov = EmpiricalCovariance(assume_centered=True).fit(f_tr - means[y_tr])
    want = np.stack([cov.mahalanobis(f - m) for m in means], axis=1).min(1)
    got = fitted("mahalanobis", "softmax_model").score(x).numpy()
    np.testing.assert_allclose(got, want, rtol=2e-3)


def test_kd_matches_sklearn_kernel_density(softmax_model, splits, fitted, digits_batch):
    from sklearn.neighbors import KernelDensity

    (x_tr, y_tr), x = splits["train"], digits_batch[0][:16]
    f_tr, f = _features(softmax_model, x_tr), _features(softmax_model, x)
    pred = softmax_model.predict(x).numpy()
    want = [-KernelDensity(bandwidth=1.0).fit(f_tr[y_tr.numpy() == c]).score_samples(f[i:i + 1])[0]
            for i, c in enumerate(pred)]  # every class has < 500 training points: none dropped
    got = fitted("kd", "softmax_model").score(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3)


def test_kd_subset_per_class_is_capped_and_deterministic(softmax_model, splits, digits_batch):
    x, (x_tr, y_tr) = digits_batch[0][:16], splits["train"]
    a, b, c = (create_detector("kd", softmax_model, max_per_class=10, seed=seed).fit(x_tr[:300], y_tr[:300])
               for seed in (0, 0, 1))
    assert torch.equal(a.score(x), b.score(x)) and not torch.equal(a.score(x), c.score(x))


def test_mahalanobis_input_noise_moves_toward_the_closest_mean(softmax_model, splits, fitted,
                                                              digits_batch):
    x = digits_batch[0][:64]
    plain = fitted("mahalanobis", "softmax_model")
    noisy = create_detector("mahalanobis", softmax_model, noise=0.01).fit(*splits["train"])
    s_plain, s_noisy = plain.score(x), noisy.score(x)
    assert (s_noisy < s_plain).float().mean() > 0.9  # a step against the distance's gradient
    with torch.no_grad():  # score_from ignores the pre-processing
        torch.testing.assert_close(noisy.score_from(*softmax_model.features_and_logits(x)), s_plain)


@pytest.mark.slow
def test_importing_the_package_loads_no_detector_module():
    code = ("import sys, robench.defenses.detectors as d; "
            "bad = [m for m in sys.modules if m.startswith(('sklearn', 'scipy')) "
            "or m.startswith('robench.defenses.detectors.') and not m.endswith('.base')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_scores_follow_the_model_device(gm_model, splits, digits_batch):
    import copy

    model = copy.deepcopy(gm_model).cuda()
    x = digits_batch[0][:32]
    for name in DETECTORS:
        det = create_detector(name, model).fit(*splits["train"]).calibrate(splits["val"][0])
        scores = det.score(x)
        assert scores.device.type == "cpu"
        with torch.no_grad():
            from_gpu = det.score_from(*model.features_and_logits(x.cuda()))
        assert from_gpu.device.type == "cuda"
        torch.testing.assert_close(from_gpu.cpu(), scores, rtol=1e-4, atol=1e-4)
