"""The native attack engine: every registered attack, verification, objectives, arguments."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from robench.attacks import Runtime, create_attack, expand_families
from robench.attacks.objectives import make_objective, true_and_best_other
from robench.attacks.pgd import PGD
from robench.attacks.verify import distances
from robench.errors import AttackVerificationError, DataError, UnknownNameError, UsageError
from robench.registry import registry

NATIVE = [n for n in registry("attacks").names() if n not in ("ta", "art")]
EPS = {"Linf": 0.15, "L2": 1.5}
# Enough budget to show the drop on 64 digits, small enough for a quick test run.
FAST = {"cw-l2": {"binary_search_steps": 4, "steps": 25}}


def accuracy(model, x, y) -> float:
    return float((model.predict(x) == y).float().mean())


@pytest.fixture(scope="module")
def batch(digits_batch):
    x, y = digits_batch
    return x[:64], y[:64]


class CenterDetector:
    """Test double: squared distance of the feature to the clean mean; threshold from clean scores."""

    name = "center-distance"

    def __init__(self, model, x_clean):
        with torch.no_grad():
            feats = model.features(x_clean)
        self.center = feats.mean(0)
        self.clean_scores = self.score_from(feats, None)

    def score_from(self, features, logits):
        return ((features - self.center) ** 2).sum(1)

    def threshold(self, fpr):
        return float(torch.quantile(self.clean_scores, 1 - fpr))


# -- every registered native attack -------------------------------------------------

def test_native_attacks_are_registered():
    assert {"fgsm", "bim", "pgd", "pgd-l2", "mim", "cw-l2"} <= set(NATIVE)


@pytest.mark.parametrize("name", NATIVE)
def test_attack_drops_accuracy_and_stays_in_ball(name, softmax_model, batch):
    x, y = batch
    norm = registry("attacks").get(name).norm
    eps = EPS[norm]
    attack = create_attack(name, softmax_model, eps=eps, **FAST.get(name, {}))
    x_adv = attack(x, y)
    assert x_adv.shape == x.shape and x_adv.device == x.device and not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert float(distances(x, x_adv, norm).max()) <= eps + 1e-6
    assert accuracy(softmax_model, x_adv, y) < accuracy(softmax_model, x, y) - 0.25
    assert attack.n_forward >= len(x) and attack.n_backward >= len(x)
    assert attack.params["eps"] == eps and attack.name == name


def test_x_is_not_modified(softmax_model, batch):
    x, y = batch
    before = x.clone()
    create_attack("pgd", softmax_model, eps=0.1, steps=2)(x, y)
    assert torch.equal(x, before)


def test_pass_counters(softmax_model, batch):
    x, y = batch
    attack = create_attack("pgd", softmax_model, eps=0.1, steps=3)
    attack(x, y)
    assert (attack.n_forward, attack.n_backward) == (3 * len(x), 3 * len(x))
    attack = create_attack("pgd", softmax_model, eps=0.1, steps=3, restarts=2)
    attack(x, y)  # one extra forward per attempt scores its end point
    assert (attack.n_forward, attack.n_backward) == (8 * len(x), 6 * len(x))


def test_restarts_keep_the_best_per_sample(softmax_model, batch):
    x, y = batch
    margin = make_objective("t", "margin", {})
    one = create_attack("pgd", softmax_model, eps=0.1, steps=3, objective="margin", seed=5)(x, y)
    three = create_attack("pgd", softmax_model, eps=0.1, steps=3, objective="margin", seed=5,
                          restarts=3)(x, y)
    with torch.no_grad():  # same seed: the first attempt is the single run, so never worse
        assert torch.all(margin(softmax_model(three), y) >= margin(softmax_model(one), y) - 1e-5)


@pytest.mark.parametrize("name", ["pgd", "pgd-l2", "fgsm", "mim", "bim"])
def test_active_rows_get_the_result_of_a_full_call(name, softmax_model, batch):
    """The cascade attacks a subset; each attacked row must equal its full-batch result,
    random start included, and the other rows come back untouched."""
    x, y = batch
    eps = 1.0 if name == "pgd-l2" else 0.1
    full = create_attack(name, softmax_model, eps=eps, seed=7)(x, y)
    active = torch.arange(len(x)) % 3 == 1
    part = create_attack(name, softmax_model, eps=eps, seed=7)(x, y, active=active)
    assert torch.allclose(part[active], full[active], atol=1e-6)
    assert torch.equal(part[~active], x[~active])
    assert not torch.equal(part[active], x[active])


def test_cascade_restarts_run_only_on_unbroken_rows(softmax_model, batch):
    """Cascaded restarts cost fewer passes and break at least the rows plain restarts break."""
    x, y = batch
    plain = create_attack("pgd", softmax_model, eps=0.08, steps=3, restarts=4, seed=2)
    cascade = create_attack("pgd", softmax_model, eps=0.08, steps=3, restarts=4, seed=2,
                            runtime=Runtime(cascade=True))
    broken_plain = softmax_model.predict(plain(x, y)) != y
    broken_cascade = softmax_model.predict(cascade(x, y)) != y
    assert broken_plain.any() and (~broken_plain).any()  # the budget leaves work for restarts
    assert bool((broken_cascade | ~broken_plain).all())  # never weaker, row by row
    assert cascade.n_backward < plain.n_backward
    # A row broken by the first attempt is never attacked again: the first restart runs
    # exactly on the rows a single attempt (same seed, same draws) leaves unbroken.
    single = create_attack("pgd", softmax_model, eps=0.08, steps=3, seed=2)
    left = int((softmax_model.predict(single(x, y)) == y).sum())
    assert 3 * len(x) + 3 * left <= cascade.n_backward <= 3 * len(x) + 9 * left


def test_active_mask_must_be_a_bool_row_mask(softmax_model, batch):
    x, y = batch
    with pytest.raises(DataError, match="active"):
        create_attack("fgsm", softmax_model, eps=0.1)(x, y, active=torch.ones(3, dtype=torch.bool))


def test_seeded_and_global_rng_untouched(softmax_model, batch):
    x, y = batch
    state = torch.random.get_rng_state()
    a = create_attack("pgd", softmax_model, eps=0.1, steps=2, seed=3)(x, y)
    b = create_attack("pgd", softmax_model, eps=0.1, steps=2, seed=3)(x, y)
    c = create_attack("pgd", softmax_model, eps=0.1, steps=2, seed=4)(x, y)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(state, torch.random.get_rng_state())


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_works_under_no_grad(softmax_model, batch, context):
    x, y = batch
    with context():
        x_adv = create_attack("fgsm", softmax_model, eps=0.1)(x, y)
    assert not torch.equal(x_adv, x)


def test_l2_budget_above_one_is_allowed(softmax_model, batch):
    x, y = batch
    x_adv = create_attack("pgd-l2", softmax_model, eps=2.0, steps=2)(x, y)
    assert float(distances(x, x_adv, "L2").max()) <= 2.0 + 1e-6


def test_cw_with_eps_stays_in_its_ball(softmax_model, batch):
    x, y = batch
    attack = create_attack("cw-l2", softmax_model, eps=0.3, binary_search_steps=2, steps=10)
    x_adv = attack(x[:16], y[:16])
    assert attack.eps == 0.3 and float(distances(x[:16], x_adv, "L2").max()) <= 0.3 + 1e-6
    assert create_attack("cw-l2", softmax_model, eps=0).eps is None  # unbounded


# -- invariants of the base class ---------------------------------------------------

class Planted(PGD):
    name = "planted"

    def __init__(self, model, eps, bad, **kwargs):
        super().__init__(model, eps, **kwargs)
        self.bad = bad

    def _run(self, x, y):
        self.seen_training = self.model.training
        return {"ball": (x + 2 * self.eps).clamp(0, 1), "range": x + 2.0,
                "nan": x * float("nan"), "shape": x[:1], "ok": x}[self.bad]


@pytest.mark.parametrize("bad, words", [("ball", "Linf ball"), ("range", "[0, 1]"),
                                        ("nan", "non-finite"), ("shape", "shape")])
def test_verification_catches_planted_violation(softmax_model, batch, bad, words):
    x, y = batch
    with pytest.raises(AttackVerificationError, match="planted") as info:
        Planted(softmax_model, 0.1, bad)(x, y)
    assert words in str(info.value)


def test_eval_mode_during_attack_and_modes_restored(softmax_model, batch):
    x, y = batch
    model = softmax_model
    model.train()
    model.net.head.eval()  # a mixed state must come back exactly, not as model.train()
    try:
        attack = Planted(model, 0.1, "ok")
        attack(x, y)
        assert attack.seen_training is False
        assert model.training and model.net.conv.training and not model.net.head.training
    finally:
        model.eval()


@pytest.mark.parametrize("x_bad, y_bad", [("above", None), ("below", None), (None, "range"),
                                          (None, "float"), (None, "length")])
def test_bad_inputs_are_rejected(softmax_model, batch, x_bad, y_bad):
    x, y = batch
    x = {"above": x + 1.5, "below": x - 1.0, None: x}[x_bad]
    y = {"range": y + 10, "float": y.float(), "length": y[:3], None: y}[y_bad]
    with pytest.raises(DataError):
        create_attack("fgsm", softmax_model, eps=0.1)(x, y)


# -- objectives -----------------------------------------------------------------------

def test_margin_masks_the_true_class_with_all_negative_logits():
    logits = torch.tensor([[-50.0, -1.0, -30.0], [-2.0, -9.0, -4.0]], requires_grad=True)
    y = torch.tensor([1, 2])
    true, other = true_and_best_other(logits, y)
    assert other.tolist() == [-30.0, -2.0]  # multiplying by a zero one-hot would give 0
    margin = make_objective("t", "margin", {})(logits, y)
    assert margin.tolist() == [-29.0, 2.0]
    assert make_objective("t", "lkd", {})(logits, y).tolist() == [-30.0, -2.0]
    margin.sum().backward()
    assert logits.grad.tolist() == [[0.0, -1.0, 1.0], [1.0, 0.0, -1.0]]


def test_margin_on_gm_model_logits(gm_model, batch):
    x, y = batch
    with torch.no_grad():
        logits = gm_model(x)
    assert (logits <= 0).all()
    correct = logits.argmax(1) == y
    assert (make_objective("t", "margin", {})(logits, y)[correct] < 0).all()


def test_joint_objective_lowers_detector_scores(gm_model, digits, batch):
    x, y = batch
    detector = CenterDetector(gm_model, digits.split("val")[0])
    fpr = 0.5  # a strict detector, so evading it takes work
    kwargs = dict(eps=0.2, steps=10, random_start=False)
    margin = create_attack("pgd", gm_model, objective="margin", **kwargs)(x, y)
    attack = create_attack("pgd", gm_model, objective="joint", detector=detector, fpr=fpr,
                           detector_weight=1.0, **kwargs)
    joint = attack(x, y)
    with torch.no_grad():
        s_margin = detector.score_from(gm_model.features(margin), None)
        s_joint = detector.score_from(gm_model.features(joint), None)
    threshold = detector.threshold(fpr)
    assert s_joint.mean() < 0.8 * s_margin.mean()

    def evaded(x_adv, scores):
        return float(((gm_model.predict(x_adv) != y) & (scores <= threshold)).float().mean())

    assert evaded(joint, s_joint) > evaded(margin, s_margin) + 0.05
    assert attack.params["detector"] == "center-distance" and attack.params["fpr"] == fpr


# -- the front door -------------------------------------------------------------------

@pytest.mark.parametrize("name, eps, kwargs, words", [
    ("pgdd", 0.1, {}, "did you mean pgd"),
    ("pgd", 0.1, {"step": 3}, "unknown argument"),
    ("pgd", float("nan"), {}, r"eps must be a number in \[0, 1\], got nan"),
    ("pgd", 1.5, {}, r"eps must be a number in \[0, 1\], got 1.5"),
    ("pgd", -0.1, {}, "eps must be a number in"),
    ("pgd", None, {}, "eps"),
    ("pgd", 0.1, {"steps": 0}, r"pgd: steps must be an integer in \[1, inf\), got 0"),
    ("pgd", 0.1, {"steps": 2.5}, "steps"),
    ("pgd", 0.1, {"step_size": -1.0}, "step_size"),
    ("pgd", 0.1, {"random_start": "yes"}, "random_start"),
    ("pgd", 0.1, {"restarts": 0}, "restarts"),
    ("pgd", 0.1, {"objective": "marign"}, "did you mean margin"),
    ("pgd", 0.1, {"objective": "joint"}, "needs detector"),
    ("pgd", 0.1, {"detector": object()}, "only by objective='joint'"),
    ("pgd", 0.1, {"seed": -1}, "seed"),
    ("bim", 0.1, {"random_start": True}, "unknown argument"),
    ("pgd-l2", 100.0, {}, r"eps must be a number in \[0, 8\]"),
    ("mim", 0.1, {"decay": -1.0}, "decay"),
    ("cw-l2", 0.0, {"binary_search_steps": 0}, "binary_search_steps"),
    ("cw-l2", 0.0, {"lr": 0}, "lr"),
    ("pgd:APGD", 0.1, {}, "not a family"),
    ("ta", 0.1, {}, "is a family"),
])
def test_create_attack_rejects_bad_arguments(softmax_model, name, eps, kwargs, words):
    with pytest.raises(UsageError, match=words):
        create_attack(name, softmax_model, eps=eps, **kwargs)


def test_unknown_name_is_a_usage_error(softmax_model):
    with pytest.raises(UnknownNameError):
        create_attack("nope", softmax_model, eps=0.1)


def test_params_record_resolved_defaults(softmax_model):
    attack = create_attack("pgd", softmax_model, eps=0.2)
    assert attack.params == {"eps": 0.2, "seed": 0, "objective": "ce", "steps": 20,
                             "step_size": pytest.approx(0.025), "random_start": True, "restarts": 1}
    assert attack.norm == "Linf" and attack.objective == "ce"


def test_import_does_not_load_torchattacks_or_art():
    code = ("import sys, robench.attacks; "
            "bad = [m for m in ('torchattacks', 'art', 'torch') if m in sys.modules]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_expand_families():
    names = expand_families(["pgd", "ta", "art"])
    assert names[0] == "pgd" and "ta" not in names and "art" not in names
    assert {"ta:APGD", "ta:AutoAttack", "ta:Square", "art:ProjectedGradientDescent",
            "art:DeepFool", "art:CarliniL2Method"} <= set(names)
