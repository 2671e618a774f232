"""Adaptive attacks: multi-targeted, selective / orthogonal PGD, EoT, BPDA; runtime options; ranges."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from robench.attacks import Runtime, create_attack, supports
from robench.attacks.base import GRADIENT_OPTIONS, GradientAttack
from robench.attacks.eot import gradient_spread
from robench.attacks.objectives import make_objective
from robench.defenses.detectors import create_detector
from robench.errors import UsageError
from robench.params import is_number
from robench.registry import registry

pytestmark = pytest.mark.usefixtures("one_thread")

NATIVE = [n for n in registry("attacks").names() if n not in ("ta", "art")]
EPS = {"Linf": 0.1, "L2": 1.0}


@pytest.fixture(scope="module")
def points(digits):
    return digits.split("test", 100)


def fitted(name, model, digits, **params):
    return create_detector(name, model, **params).fit(*digits.split("train")).calibrate(digits.split("val")[0])


def evaded(model, detector, x_adv, y, fpr=0.05) -> float:
    """Misclassified and under the detector's threshold, scored by the REAL detector."""
    flagged = detector.score(x_adv) > detector.threshold(fpr)
    return float(((model.predict(x_adv) != y) & ~flagged).float().mean())


# -- objectives ----------------------------------------------------------------------

def test_targeted_objectives_aim_at_the_target():
    logits = torch.tensor([[4.0, 1.0, 3.0, 0.0, -2.0]])
    aimed = torch.tensor([[0, 3]])  # true class 0, target 3
    values = {name: float(make_objective("t", name, {})(logits, aimed)) for name in ("ce", "margin", "lkd", "dlr")}
    assert values["ce"] == pytest.approx(-float(F.cross_entropy(logits, torch.tensor([3]))))
    assert values["margin"] == pytest.approx(0.0 - 4.0)  # z_t - max_{j != t} z_j
    assert values["lkd"] == pytest.approx(0.0)  # z_t
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2): sorted 4, 3, 1, 0, -2
    assert values["dlr"] == pytest.approx(-(4.0 - 0.0) / (4.0 - (1.0 + 0.0) / 2))


def test_dlr_matches_the_reference_formula():
    torchattacks = pytest.importorskip("torchattacks")
    logits, y = torch.randn(32, 10, generator=torch.Generator().manual_seed(0)), torch.arange(32) % 10
    reference = torchattacks.APGD.dlr_loss(None, logits, y)
    assert torch.allclose(make_objective("t", "dlr", {})(logits, y), reference, atol=1e-6)


# -- multi-targeted ---------------------------------------------------------------------

def test_targets_are_the_highest_other_classes_and_later_ones_run_on_unwon_rows(softmax_model, points):
    x, y = points
    attack = create_attack("pgd", softmax_model, eps=0.06, steps=5, targets=3)
    seen, inner = [], attack._attack

    def spy(xs, aimed):
        seen.append(aimed.clone())
        return inner(xs, aimed)

    attack._attack = spy
    x_adv = attack(x, y)
    with torch.no_grad():
        ranked = softmax_model(x).scatter(1, y.unsqueeze(1), float("-inf")).argsort(1, descending=True)
    assert len(seen) == 3 and len(seen[0]) == len(x)
    assert torch.equal(seen[0][:, 1], ranked[:, 0]) and torch.equal(seen[0][:, 0], y)
    assert len(seen[2]) < len(seen[1]) < len(x)  # each pass only on the rows not yet won
    passes = sum(len(a) for a in seen)
    assert attack.n_backward == 5 * passes and attack.n_forward == len(x) + 6 * passes
    assert bool((softmax_model.predict(x_adv) != y).any())


def test_more_targets_are_never_weaker_row_by_row(softmax_model, points):
    x, y = points
    one = create_attack("pgd", softmax_model, eps=0.06, steps=5, objective="margin", targets=1)(x, y)
    four = create_attack("pgd", softmax_model, eps=0.06, steps=5, objective="margin", targets=4)(x, y)
    won_one, won_four = softmax_model.predict(one) != y, softmax_model.predict(four) != y
    assert bool((won_four | ~won_one).all()) and won_four.sum() > won_one.sum()


def test_multi_targeted_rows_are_aligned_under_a_mask(softmax_model, points):
    x, y = points
    full = create_attack("pgd", softmax_model, eps=0.06, steps=4, targets=3, seed=5)(x, y)
    active = torch.arange(len(x)) % 2 == 0
    part = create_attack("pgd", softmax_model, eps=0.06, steps=4, targets=3, seed=5)(x, y, active=active)
    assert torch.allclose(part[active], full[active], atol=1e-6) and torch.equal(part[~active], x[~active])


def runner_up_trap():
    """A 4-class ReLU model on 9 inputs (features = the inputs) and a point at 0.5 where, at eps 0.1,
    the runner-up class 1 is out of reach (z1 <= 0.9 < z0 = 1) but class 2, third at the point,
    is not: z2 = -18 + 4 * sum(x_1..x_8) reaches 1.2 at the corner x_1..8 = 0.6 (and passes z0 only
    within 0.25 of its top, which a random start in the ball reaches with odds of about 1e-5)."""
    from robench.archs import MLP
    from tests.test_verify import make_model

    net = MLP(num_classes=4, feature_dim=9, head="linear", in_channels=9, input_size=1, hidden=())
    with torch.no_grad():
        body = net.body[1]
        body.weight.copy_(torch.eye(9))
        body.bias.zero_()
        net.head.weight.zero_()
        net.head.bias.copy_(torch.tensor([1.0, 0.3, -18.0, -5.0]))
        net.head.weight[1, 0] = 1.0
        net.head.weight[2, 1:] = 4.0
    return make_model(net, (9, 1, 1), mean=0.0, std=1.0), torch.full((1, 9, 1, 1), 0.5), torch.tensor([0])


def test_white_box_candidates_take_a_point_only_a_lower_class_can():
    """Exact verification proves the point breakable; the untargeted candidates (given margin PGD,
    APGD-DLR) miss it, the cell's multi-targeted APGD-T takes it, inside the ball."""
    from robench.threats import white_box_candidates
    from robench.verify import verify_points

    model, x, y = runner_up_trap()
    eps = 0.1
    assert int(model.predict(x)) == 0
    (exact,) = verify_points(model, x, y, eps)
    assert exact.status == "not-robust" and exact.target == 2
    cands = white_box_candidates("pgd", {"steps": 50, "restarts": 3, "objective": "margin"}, False, False, 4,
                                 norm="Linf", steps=50)
    assert [c.label for c in cands] == ["margin", "apgd-dlr", "apgd-dlr-t3"]
    won = {}
    for cand in cands:
        x_adv = create_attack(cand.attack, model, eps=eps, **cand.kwargs)(x, y)
        assert float((x_adv - x).abs().max()) <= eps + 1e-6 and 0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1
        won[cand.label] = int(model.predict(x_adv)) != 0
    assert won == {"margin": False, "apgd-dlr": False, "apgd-dlr-t3": True}


def test_gm_likelihood_pull_beats_the_untargeted_one(gm_model, digits, points):
    """lkd towards each of the 9 other classes (their log-likelihood) evades gm-likelihood more often."""
    x, y = points
    detector = fitted("gm-likelihood", gm_model, digits)
    rates = [evaded(gm_model, detector, create_attack("pgd", gm_model, eps=0.1, steps=10, objective="lkd",
                                                      **kw)(x, y), y) for kw in ({}, {"targets": 9})]
    assert rates[1] >= rates[0] and rates[1] > 0.1


# -- selective / orthogonal PGD ----------------------------------------------------------

@pytest.mark.parametrize("which, detector_name, eps, updates", [
    ("gm_model", "gm-likelihood", 0.1, ["selective"]),
    ("softmax_model", "mahalanobis", 0.1, ["selective", "orthogonal"]),
])
def test_selective_and_orthogonal_are_at_least_as_strong_as_joint(which, detector_name, eps, updates,
                                                                  request, digits, points):
    model = request.getfixturevalue(which)
    x, y = points
    detector = fitted(detector_name, model, digits)

    def rate(update):
        attack = create_attack("pgd", model, eps=eps, steps=10, objective="joint", detector=detector, update=update)
        x_adv = attack(x, y)
        twice = 2 if update != "joint" else 1  # classifier and detector terms: two backward passes
        assert attack.n_backward == twice * 10 * len(x)
        return evaded(model, detector, x_adv, y)

    joint = rate("joint")
    assert joint > 0.1
    for update in updates:
        assert rate(update) >= joint, update


def test_update_needs_the_joint_objective(softmax_model):
    with pytest.raises(UsageError, match="update='selective' needs objective='joint'"):
        create_attack("pgd", softmax_model, eps=0.1, update="selective")
    with pytest.raises(UsageError, match="did you mean orthogonal"):
        create_attack("pgd", softmax_model, eps=0.1, update="orthogonl")


# -- BPDA ------------------------------------------------------------------------------------

class WithoutStep:
    """The detector as white-box attacks saw it before BPDA: ``score_from`` of the unmoved input."""

    def __init__(self, detector):
        self.detector, self.name = detector, detector.name

    def score_from(self, features, logits):
        return self.detector.score_from(features, logits)

    def threshold(self, fpr):
        return self.detector.threshold(fpr)


def test_bpda_attacks_the_score_the_detector_really_computes(softmax_model, digits, points):
    x, y = points
    detector = fitted("mahalanobis", softmax_model, digits, noise=0.03)
    attack = create_attack("pgd", softmax_model, eps=0.1, steps=10, objective="joint", detector=detector)
    with torch.no_grad():
        seen = attack._outputs(x)[2]  # the score the objective optimises, at the same inputs
    assert torch.allclose(seen, detector.score(x), rtol=1e-4, atol=1e-4)
    attack.reset_counters()
    bpda = evaded(softmax_model, detector, attack(x, y), y)
    # Per step: the detector's own step (one forward, one backward), the forward at the stepped
    # input and the model's forward; one backward through the objective.
    assert attack.n_forward == 3 * 10 * len(x) and attack.n_backward == 2 * 10 * len(x)
    before = create_attack("pgd", softmax_model, eps=0.1, steps=10, objective="joint",
                           detector=WithoutStep(detector))(x, y)
    assert bpda >= evaded(softmax_model, detector, before, y) + 0.05


def test_identity_preprocess_costs_nothing(softmax_model, digits, points):
    x, y = points
    detector = fitted("mahalanobis", softmax_model, digits)  # noise 0: preprocess returns x itself
    attack = create_attack("pgd", softmax_model, eps=0.1, steps=3, objective="joint", detector=detector)
    attack(x, y)
    assert attack.n_forward == 3 * len(x) and attack.n_backward == 3 * len(x)


# -- EoT ---------------------------------------------------------------------------------------

class Noisy(torch.nn.Module):
    """A randomised model: Gaussian noise on the input before a fixed network."""

    def __init__(self, model, sigma):
        super().__init__()
        self.model, self.sigma, self.num_classes = model, sigma, model.num_classes

    def forward(self, x):
        return self.model(x + self.sigma * torch.randn_like(x))


def test_eot_averages_draws_and_counts_them(softmax_model, points):
    x, y = points
    one = create_attack("pgd", softmax_model, eps=0.1, steps=3, seed=1)
    three = create_attack("pgd", softmax_model, eps=0.1, steps=3, seed=1, eot=3)
    assert torch.allclose(one(x, y), three(x, y), atol=1e-6)  # a deterministic model: identical draws
    assert three.n_backward == 3 * one.n_backward and three.params["eot"] == 3


def test_gradient_spread_tells_random_gradients_from_deterministic_ones(softmax_model, points):
    x, y = points
    assert gradient_spread(softmax_model, x[:32], y[:32], draws=4) < 1e-10
    torch.manual_seed(0)
    assert gradient_spread(Noisy(softmax_model, 0.3), x[:32], y[:32], draws=4) > 0.05


# -- runtime options -----------------------------------------------------------------------

@pytest.mark.parametrize("option, runtime", [("amp", Runtime(amp="bf16")), ("compile", Runtime(compile=True))])
def test_adapters_refuse_amp_and_compile_in_one_line(softmax_model, option, runtime):
    pytest.importorskip("torchattacks")
    with pytest.raises(UsageError) as info:
        create_attack("ta:APGD", softmax_model, eps=0.1, runtime=runtime)
    assert str(info.value) == f"ta:APGD: --{option} is not supported: the library runs its own forward passes"
    assert not supports("ta:APGD", option) and not supports("art:FastGradientMethod", option)
    assert supports("pgd", option) and supports("apgd", option) and supports("cw-l2", option)


def test_runtime_is_fixed_at_construction(softmax_model):
    attack = create_attack("pgd", softmax_model, eps=0.1, runtime=Runtime(amp="bf16", cascade=True))
    assert attack.amp is torch.bfloat16 and attack.cascade and not attack.compile
    with pytest.raises(AttributeError):
        attack.cascade = False
    assert supports("ta:APGD", "cascade")
    with pytest.raises(UsageError, match="amp must be one of bf16"):
        Runtime(amp="fp16")


# -- adapters: one seed stream, full batches -----------------------------------------------------

def test_adapter_gives_each_point_the_same_example_with_and_without_a_mask(softmax_model, digits):
    pytest.importorskip("torchattacks")
    x, y = digits.split("test", 48)
    batches = list(zip(x.split(16), y.split(16)))
    masks = [torch.zeros(16, dtype=torch.bool), torch.arange(16) % 3 == 0, None]  # an empty batch first

    def build():
        return create_attack("ta:PGD", softmax_model, eps=0.1, steps=2, random_start=True, seed=4)

    full, cascade = build(), build()
    plain = [full(xb, yb) for xb, yb in batches]
    masked = [cascade(xb, yb, active=m) for (xb, yb), m in zip(batches, masks)]
    assert full._calls == cascade._calls == 3  # one advance per call, empty or not
    assert torch.equal(masked[0], batches[0][0])
    assert torch.equal(masked[1][masks[1]], plain[1][masks[1]])
    assert torch.equal(masked[1][~masks[1]], batches[1][0][~masks[1]])
    assert torch.equal(masked[2], plain[2])
    assert not torch.equal(plain[1], plain[2][:16])  # the stream does advance per call


# -- ranges ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NATIVE)
def test_every_numeric_argument_is_declared_and_checked(name, softmax_model):
    cls = registry("attacks").get(name)
    defaults = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                if p.default is not inspect.Parameter.empty}
    if issubclass(cls, GradientAttack):
        defaults.update({k: v for k, v in GRADIENT_OPTIONS.items() if k != "detector"})
    numeric = {k for k, v in defaults.items() if v is None or is_number(v)}
    assert numeric - {"eps", "runtime"} <= set(cls.ranges), "numeric arguments without a declared range"
    assert set(cls.ranges) <= set(cls.arguments())
    for param, declared in cls.ranges.items():
        for bad in declared.outside():
            with pytest.raises(UsageError) as info:
                create_attack(name, softmax_model, eps=EPS[cls.norm], **{param: bad})
            assert param in str(info.value) and str(declared) in str(info.value), str(info.value)


def test_targets_are_checked_against_the_model(softmax_model):
    with pytest.raises(UsageError, match=r"pgd: targets must be an integer in \[1, 9\], got 10"):
        create_attack("pgd", softmax_model, eps=0.1, targets=10)
    with pytest.raises(UsageError, match=r"apgd: eot must be an integer in \[1, inf\), got 0"):
        create_attack("apgd", softmax_model, eps=0.1, eot=0)


@pytest.mark.parametrize("name, kwargs, words", [
    ("pgd", {"step_size": 1e308}, r"pgd: step_size must be a number in \(0, 1\] or none, got 1e\+308"),
    ("mim", {"step_size": 2.0}, r"mim: step_size must be a number in \(0, 1\]"),
    ("pgd-l2", {"step_size": 1e308}, r"pgd-l2: step_size must be a number in \(0, 8\]"),
    ("cw-l2", {"initial_const": 1e308}, r"cw-l2: initial_const must be a number in \(0, 1e\+10\)"),
])
def test_values_that_would_overflow_float32_are_out_of_range(softmax_model, name, kwargs, words):
    """Found by the CLI fuzz test: a huge step reached torch as a float32 overflow traceback."""
    with pytest.raises(UsageError, match=words):
        create_attack(name, softmax_model, eps=EPS[registry("attacks").get(name).norm], **kwargs)
    assert create_attack("pgd", softmax_model, eps=0.5, steps=1).step_size == 1.25  # a default is not capped
