"""Native attacks against the reference libraries, and the ta: / art: adapters end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robench.attacks import create_attack
from robench.attacks.verify import distances
from robench.errors import AttackVerificationError, UnknownNameError, UsageError

torchattacks = pytest.importorskip("torchattacks")


def accuracy(model, x, y) -> float:
    return float((model.predict(x) == y).float().mean())


@pytest.mark.parametrize("which", ["softmax_model", "gm_model"])
def test_fgsm_equals_torchattacks(which, request, digits_batch):
    model = request.getfixturevalue(which)
    x, y = digits_batch
    ours = create_attack("fgsm", model, eps=0.1)(x, y)
    theirs = torchattacks.FGSM(model, eps=0.1)(x, y)
    assert float((ours - theirs).abs().max()) <= 1e-6


def test_pgd_matches_torchattacks_robust_accuracy(softmax_model, digits_batch):
    x, y = digits_batch
    ours = create_attack("pgd", softmax_model, eps=0.1, steps=10, step_size=0.025,
                         random_start=False)(x, y)
    theirs = torchattacks.PGD(softmax_model, eps=0.1, alpha=0.025, steps=10, random_start=False)(x, y)
    acc_ours, acc_theirs = accuracy(softmax_model, ours, y), accuracy(softmax_model, theirs, y)
    assert acc_ours < accuracy(softmax_model, x, y) - 0.3
    assert abs(acc_ours - acc_theirs) <= 0.01


def test_cw_l2_beats_torchattacks_cw(softmax_model, digits_batch):
    x, y = digits_batch
    x, y = x[:64], y[:64]
    correct = softmax_model.predict(x) == y
    ours = create_attack("cw-l2", softmax_model, eps=0, binary_search_steps=5, steps=30)(x, y)
    theirs = torchattacks.CW(softmax_model, c=1)(x, y)
    fooled_ours = correct & (softmax_model.predict(ours) != y)
    fooled_theirs = correct & (softmax_model.predict(theirs) != y)
    assert fooled_ours.sum() >= 0.9 * correct.sum()
    assert fooled_ours.sum() >= fooled_theirs.sum()
    # Minimal-distance quality, compared where both succeed (a larger success set
    # holds harder points, so medians over each own set would not compare like with like).
    both = fooled_ours & fooled_theirs
    assert both.sum() >= 10
    l2_ours, l2_theirs = distances(x, ours, "L2")[both], distances(x, theirs, "L2")[both]
    assert l2_ours.median() <= l2_theirs.median()


# -- adapters ------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs", [
    ("ta:APGD", {"steps": 5}),
    ("ta:PGDL2", {"steps": 5}),
    ("art:ProjectedGradientDescent", {"max_iter": 5, "eps_step": 0.05}),
])
def test_adapter_end_to_end(name, kwargs, softmax_model, digits_batch):
    x, y = digits_batch
    x, y = x[:48], y[:48]
    eps = 1.5 if "L2" in name else 0.15
    state = torch.random.get_rng_state()
    np_state = np.random.get_state()[1].copy()
    attack = create_attack(name, softmax_model, eps=eps, **kwargs)
    x_adv = attack(x, y)
    assert attack.name == name and attack.eps == eps and attack.norm in ("Linf", "L2")
    assert float(distances(x, x_adv, attack.norm).max()) <= eps + 1e-6
    assert accuracy(softmax_model, x_adv, y) < accuracy(softmax_model, x, y) - 0.25
    assert attack.n_forward >= len(x) and attack.n_backward >= len(x)
    assert torch.equal(state, torch.random.get_rng_state())
    assert np.array_equal(np_state, np.random.get_state()[1])
    assert not softmax_model.training


def test_unbounded_adapter_is_verified_on_range_only(softmax_model, digits_batch):
    x, y = digits_batch
    attack = create_attack("art:DeepFool", softmax_model, eps=0.1, max_iter=5)
    assert attack.eps is None
    x_adv = attack(x[:8], y[:8])
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_adapter_result_is_verified(softmax_model, digits_batch, monkeypatch):
    x, y = digits_batch
    attack = create_attack("ta:FGSM", softmax_model, eps=0.1)
    monkeypatch.setattr(attack.attack, "forward", lambda xb, yb: (xb + 0.3).clamp(0, 1))
    with pytest.raises(AttackVerificationError, match="ta:FGSM"):
        attack(x[:8], y[:8])


@pytest.mark.parametrize("name, kwargs, error, words", [
    ("ta:APDG", {}, UnknownNameError, "did you mean APGD"),
    ("art:Deepfol", {}, UnknownNameError, "did you mean DeepFool"),
    ("ta:APGD", {"stepz": 3}, UsageError, "unknown argument"),
    ("ta:APGD", {"norm": "L7"}, UsageError, "unknown norm"),
    ("art:FastGradientMethod", {"norm": 0.5}, UsageError, "norm"),
])
def test_adapter_errors(softmax_model, name, kwargs, error, words):
    with pytest.raises(error, match=words):
        create_attack(name, softmax_model, eps=0.1, **kwargs)
