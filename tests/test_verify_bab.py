"""robench.verify.bab: branch and bound over ReLU splits against the exact MILP optimum.

Small MLPs (two hidden layers, so the splits interact through a later layer)
where HiGHS, solved to optimality per target, gives the true minimum margin:
every target bab proves HiGHS must prove too, every candidate it returns must
have a negative margin, and on these sizes it must decide all.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robench.archs import MLP
from robench.verify import bab, solvers, verify_points
from robench.verify.bounds import compute_bounds, input_box
from robench.verify.extract import extract_network
from robench.verify.milp import build_program
from robench.verify.network import DTYPE
from robench.verify.tighten import tighten_bounds
from tests.test_verify import make_model
from tests.test_verify_exact import digits_mlp  # noqa: F401 (a module-scoped fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def small_mlp(seed: int, head: str = "linear"):
    torch.manual_seed(seed)
    net = MLP(num_classes=4, feature_dim=8, head=head, in_channels=1, input_size=5, hidden=(16, 12))
    return make_model(net, (1, 5, 5), mean=0.5, std=0.5)


def exact_sign(net, bounds, y: int, t: int) -> str:
    """HiGHS on the target's program: "positive" (min z_y - z_t >= PROOF_MARGIN) or "negative"."""
    prog = build_program(net, bounds)
    coef = np.zeros(net.nodes[net.output].shape[0])
    coef[y], coef[t] = 1.0, -1.0
    cost, const = prog.objective(net.output, coef)
    res = solvers.solve(prog, cost, const, "highs", 60.0)
    assert res.status in ("positive", "negative")
    return res.status


def cases():
    """(model, net, bounds, label, eps) for points of several seeds and budgets."""
    gen = torch.Generator().manual_seed(0)
    for seed, head in ((0, "linear"), (1, "gm"), (2, "linear"), (3, "gm")):
        model = small_mlp(seed, head)
        net = extract_network(model)
        for _ in range(2):
            x0 = torch.rand((1, 5, 5), generator=gen)
            y = int(model(x0[None]).argmax())
            for eps in (0.05, 0.15):
                box = input_box(x0, eps)
                bounds = tighten_bounds(net, compute_bounds(net, box, y), box, y)
                yield model, net, bounds, y, eps


def test_bab_verdicts_match_highs():
    seen = {"positive": 0, "negative": 0}
    branched = 0
    for model, net, bounds, y, eps in cases():
        assert bab.supports(net)
        search = bab.MarginBab(net, bounds, y)
        for t in range(4):
            if t == y:
                continue
            res = search.run(t, 30.0)
            assert res.status == exact_sign(net, bounds, y, t)  # small nets: always decided, and right
            seen[res.status] += 1
            if res.status == "positive":
                assert res.bound >= solvers.PROOF_MARGIN
                branched += res.domains > 1
            else:
                cand = res.candidate.to(DTYPE)
                lo, hi = bounds.lower[0], bounds.upper[0]
                assert (cand >= lo - 1e-12).all() and (cand <= hi + 1e-12).all()
                assert net.margins(cand[None], y)[0, t] < 0
    assert seen["positive"] >= 10 and seen["negative"] >= 5, seen
    assert branched >= 3  # some proofs needed splits, not only the root bound


def test_bab_bounds_stay_below_sampled_margins():
    """Each proved bound is below the margin at random points of the box (soundness by sampling)."""
    for model, net, bounds, y, eps in list(cases())[::3]:
        lo, hi = bounds.lower[0], bounds.upper[0]
        samples = lo + (hi - lo) * torch.rand((2000, *lo.shape), dtype=DTYPE)
        margins = net.margins(samples, y)
        search = bab.MarginBab(net, bounds, y)
        for t in range(4):
            if t != y:
                res = search.run(t, 30.0)
                if res.status == "positive":
                    assert res.bound <= float(margins[:, t].min()) + 1e-9


def test_auto_runs_bab_first_and_agrees_with_highs(digits_mlp, digits):
    x, y = digits.split("test", 16)
    x, y = x[[2, 10, 12, 15]], y[[2, 10, 12, 15]]  # points with several targets open at eps 0.12
    auto = verify_points(digits_mlp, x, y, 0.12, workers=2)
    highs = verify_points(digits_mlp, x, y, 0.12, solver="highs", workers=1)
    assert [r.status for r in auto] == [r.status for r in highs]
    assert {"robust", "not-robust"} <= {r.status for r in auto}
    assert all(r.solver == "bab+highs" for r in auto if r.n_binaries)
    assert sum(r.domains for r in auto) > 0 and all(r.domains == 0 for r in highs)
    for r in auto:
        if r.status == "robust":
            assert r.margin_lower >= solvers.PROOF_MARGIN
        if r.status == "not-robust":
            assert int(digits_mlp(r.counterexample[None]).argmax()) != int(y[auto.index(r)])


def test_targets_bab_leaves_open_go_to_the_solver(digits_mlp, digits, monkeypatch):
    x, y = digits.split("test", 16)
    x, y = x[[2, 12]], y[[2, 12]]
    monkeypatch.setattr(bab.MarginBab, "run", lambda self, t, limit, cancel=None: bab.BabResult(
        "unknown", -math.inf, None, 0.0, 7))
    res = verify_points(digits_mlp, x, y, 0.12, workers=1)
    assert [r.status for r in res] == ["robust", "not-robust"]
    assert res[0].domains >= 7 and res[0].nodes >= 0 and res[0].targets_solved > 0


def test_full_minimum_questions_skip_bab():
    """bab answers the sign only: asked for the exact minimum, the solver takes every program."""
    from tests.test_verify_exact import tiny_2d

    model = tiny_2d("gm", 4)
    x0 = torch.tensor([0.3, 0.6]).reshape(1, 2, 1, 1)
    y = model(x0).argmax(1)
    for kwargs in ({}, {"threshold": 5.0}):
        (res,) = verify_points(model, x0, y, 0.3, **kwargs)
        assert res.n_binaries > 0 and res.solver == "bab+highs" and res.domains > 0, kwargs
    for kwargs in ({"stop_at_sign": False}, {"stop_at_sign": False, "threshold": 5.0}):
        (res,) = verify_points(model, x0, y, 0.3, **kwargs)
        assert res.domains == 0 and res.solver == "highs" and res.targets_solved > 0, kwargs


def test_bab_needs_a_chain():
    from robench.verify.network import Network, Node

    net = extract_network(small_mlp(0))
    assert bab.supports(net)
    nodes = list(net.nodes)
    residual = Network(nodes + [Node("add", (len(nodes) - 1, len(nodes) - 1), nodes[-1].shape, coefs=(1.0, 1.0))],
                       net.features)
    assert not bab.supports(residual)
    with pytest.raises(ValueError):
        bab.MarginBab(residual, None, 0)


def conv_chain(seed: int):
    """input (1, 5, 5) -> conv 3x3 (4 maps) -> relu -> dense 10 -> relu -> dense 3, by hand."""
    from robench.verify.network import Conv, Dense, Network, Node

    g = torch.Generator().manual_seed(seed)
    conv = Conv(torch.randn((4, 1, 3, 3), generator=g), torch.randn(4, generator=g) * 0.3, (1, 1), (0, 0),
                (1, 1), 1, (1, 5, 5))
    d1 = Dense(torch.randn((10, 36), generator=g) / 6, torch.randn(10, generator=g) * 0.3, (4, 3, 3))
    d2 = Dense(torch.randn((3, 10), generator=g) / 3, torch.zeros(3), (10,))
    nodes = [Node("input", (), (1, 5, 5)), Node("linear", (0,), (4, 3, 3), op=conv), Node("relu", (1,), (4, 3, 3)),
             Node("linear", (2,), (10,), op=d1), Node("relu", (3,), (10,)), Node("linear", (4,), (3,), op=d2)]
    return Network(nodes, features=4)


def test_bab_on_a_convolutional_chain_matches_highs():
    """The transpose of a convolution carries gradients to the slopes too: same verdicts as HiGHS."""
    seen = set()
    gen = torch.Generator().manual_seed(1)
    for seed in range(3):
        net = conv_chain(seed)
        assert bab.supports(net)
        for _ in range(3):
            x0 = torch.rand((1, 5, 5), generator=gen, dtype=DTYPE)
            y = int(net.forward(x0[None])[net.output][0].argmax())
            box = input_box(x0, 0.1)
            bounds = tighten_bounds(net, compute_bounds(net, box, y), box, y)
            search = bab.MarginBab(net, bounds, y)
            for t in range(3):
                if t != y:
                    res = search.run(t, 30.0)
                    assert res.status == exact_sign(net, bounds, y, t)
                    seen.add(res.status)
    assert seen == {"positive", "negative"}


def test_bab_with_the_detector_ball_matches_highs():
    """With a gm-likelihood threshold (misclassified AND inside the target's ball): every verdict
    bab gives is HiGHS's with the outer approximation; it decides most targets by itself."""
    gen = torch.Generator().manual_seed(5)
    decided, verdicts = 0, {"positive": 0, "negative": 0, "unknown": 0}
    for seed in (0, 11):  # GM seeds whose decision regions split the input cube
        net = extract_network(small_mlp(seed, "gm"))
        for _ in range(2):
            x0 = torch.rand((1, 5, 5), generator=gen, dtype=DTYPE)
            y = int(net.forward(x0[None])[net.output][0].argmax())
            box = input_box(x0, 0.3)
            bounds = tighten_bounds(net, compute_bounds(net, box, y), box, y)
            samples = box[0] + (box[1] - box[0]) * torch.rand((500, 1, 5, 5), generator=gen, dtype=DTYPE)
            values = net.forward(samples)
            f, z = values[net.features], values[net.output]
            prog = build_program(net, bounds)
            for t in range(4):
                if t == y:
                    continue
                q = 0.5 * ((f - net.mu[t]) ** 2).sum(1)
                broken = q[z[:, t] > z[:, y]]  # sampled points misclassified as t: their q
                thresholds = [float(q.min()) / 2] + ([float(broken.quantile(0.5))] if len(broken) else [])
                for thr in thresholds:
                    res = bab.MarginBab(net, bounds, y, thr).run(t, 20.0)
                    verdicts[res.status] += 1
                    if res.status == "unknown":
                        continue
                    coef = np.zeros(4)
                    coef[y], coef[t] = 1.0, -1.0
                    cost, const = prog.objective(net.output, coef)
                    quad = solvers.Quadratic(prog.exprs[net.features], net.mu[t].numpy(), thr)
                    assert res.status == solvers.solve(prog, cost, const, "highs", 60.0, quadratic=quad).status
                    decided += 1
                    if res.status == "negative":
                        values = net.forward(res.candidate.to(DTYPE)[None])
                        assert 0.5 * float(((values[net.features][0] - net.mu[t]) ** 2).sum()) <= thr
                        assert float(values[net.output][0, y] - values[net.output][0, t]) < 0
    assert verdicts["positive"] >= 5 and verdicts["negative"] >= 3, verdicts
    assert decided >= 0.7 * sum(verdicts.values()), verdicts
