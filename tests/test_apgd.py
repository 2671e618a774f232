"""Native APGD (Croce & Hein 2020): the schedule, the reference implementation, PGD as a floor."""

from __future__ import annotations

import pytest

from robench.attacks import create_attack
from robench.attacks.apgd import checkpoints
from robench.attacks.verify import distances

pytestmark = pytest.mark.usefixtures("one_thread")
torchattacks = pytest.importorskip("torchattacks")

EPS = 0.08  # robust accuracy near 0.5 on the digits softmax model: a point of difference is 2 samples
STEPS = 25


def accuracy(model, x, y) -> float:
    return float((model.predict(x) == y).float().mean())


@pytest.fixture(scope="module")
def points(digits):
    return digits.split("test", 200)


def test_checkpoints_follow_the_paper():
    # p = 0, 0.22, then gaps shrinking by 0.03 down to 0.06: 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99.
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1000)[:3] == [220, 410, 570]
    assert checkpoints(1) == [1]


@pytest.mark.parametrize("loss", ["ce", "dlr"])
def test_matches_torchattacks_and_beats_pgd(softmax_model, points, loss):
    x, y = points
    attack = create_attack("apgd", softmax_model, eps=EPS, steps=STEPS, objective=loss)
    ours = accuracy(softmax_model, attack(x, y), y)
    theirs = accuracy(softmax_model, torchattacks.APGD(softmax_model, eps=EPS, steps=STEPS, loss=loss)(x, y), y)
    pgd = accuracy(softmax_model, create_attack("pgd", softmax_model, eps=EPS, steps=STEPS,
                                                objective=loss)(x, y), y)
    assert 0.2 < ours < accuracy(softmax_model, x, y) - 0.2  # a regime where a point means something
    assert abs(ours - theirs) <= 0.01
    assert ours <= pgd
    assert attack.n_backward == (STEPS + 1) * len(x)  # one gradient per iterate, the start included


def test_targeted_matches_torchattacks_apgdt(softmax_model, points):
    x, y = points
    ours = create_attack("apgd", softmax_model, eps=EPS, steps=STEPS, objective="dlr", targets=3)(x, y)
    reference = torchattacks.APGDT(softmax_model, eps=EPS, steps=STEPS, n_classes=10)
    reference.n_target_classes = 3  # the three highest other classes, as targets=3
    theirs = reference(x, y)
    assert abs(accuracy(softmax_model, ours, y) - accuracy(softmax_model, theirs, y)) <= 0.01


def test_l2_stays_in_its_ball_and_beats_pgd_l2(softmax_model, points):
    x, y = points
    x, y = x[:100], y[:100]
    x_adv = create_attack("apgd-l2", softmax_model, eps=0.6, steps=STEPS, seed=1)(x, y)
    assert float(distances(x, x_adv, "L2").max()) <= 0.6 + 1e-5
    pgd = create_attack("pgd-l2", softmax_model, eps=0.6, steps=STEPS, seed=1)(x, y)
    assert accuracy(softmax_model, x_adv, y) <= accuracy(softmax_model, pgd, y)
    assert accuracy(softmax_model, x_adv, y) < accuracy(softmax_model, x, y) - 0.2


def test_best_point_is_returned_even_when_the_last_iterate_is_worse(softmax_model, points):
    """Each returned example is misclassified wherever any iterate was: compare a 1-step run,
    whose only iterates are the start and one step, with the longer run's end points."""
    x, y = points
    long = create_attack("apgd", softmax_model, eps=EPS, steps=STEPS, objective="ce", seed=3)
    x_long = long(x, y)
    short = create_attack("apgd", softmax_model, eps=EPS, steps=1, objective="ce", seed=3)(x, y)
    fooled_short = softmax_model.predict(short) != y
    # Same seed, same start and first step: a point the first step won stays won.
    assert bool((softmax_model.predict(x_long) != y)[fooled_short].all())
