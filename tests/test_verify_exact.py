"""robench.verify, method exact: the MILP against brute force, attacks and the float32 model.

The 2-D networks (input shape (2, 1, 1)) let a 201 x 201 grid of the ball
stand in for the truth; the digits MLP checks the verdicts against PGD and
the real model.
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from robench.archs import MLP
from robench.errors import UsageError
from robench.verify import verify_points
from robench.verify import solvers
from robench.verify.bounds import compute_bounds, input_box
from robench.verify.extract import extract_network
from robench.verify.network import DTYPE
from robench.verify.tighten import tighten_bounds
from tests.test_verify import make_model

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_2d(head: str, seed: int):
    torch.manual_seed(seed)
    net = MLP(num_classes=3, feature_dim=6, head=head, in_channels=2, input_size=1, hidden=(8,))
    return make_model(net, (2, 1, 1), mean=0.5, std=0.5)


def grid(x0: torch.Tensor, eps: float, k: int = 201) -> torch.Tensor:
    lo, hi = input_box(x0, eps)
    a = torch.linspace(float(lo[0, 0, 0]), float(hi[0, 0, 0]), k, dtype=DTYPE)
    b = torch.linspace(float(lo[1, 0, 0]), float(hi[1, 0, 0]), k, dtype=DTYPE)
    aa, bb = torch.meshgrid(a, b, indexing="ij")
    return torch.stack([aa.reshape(-1), bb.reshape(-1)], 1).reshape(-1, 2, 1, 1)


def brute(model, x0, y, eps, thr=None):
    """min over grid points (unflagged for the target, with a threshold) of z_y - z_t; and the points."""
    net = extract_network(model)
    pts = grid(x0, eps)
    values = net.forward(pts)
    z, f = values[net.output], values[net.features]
    margins = z[:, y:y + 1] - z
    margins[:, y] = float("inf")
    if thr is not None:
        dist = 0.5 * ((f[:, None, :] - net.mu[None]) ** 2).sum(2)
        margins = torch.where(dist <= thr, margins, torch.full_like(margins, float("inf")))
    return float(margins.min()), pts, margins.min(1).values


# Seeds whose decision regions split the unit square (others predict one class everywhere).
CASES = [(seed, (a, b), eps) for seed in (1, 3, 4) for (a, b) in ((0.3, 0.6), (0.8, 0.2), (0.5, 0.5))
         for eps in (0.05, 0.3)]


@pytest.mark.parametrize("head", ["linear", "gm"])
def test_exact_minimum_matches_brute_force_and_bounds_stay_below(head):
    statuses = set()
    for seed, (a, b), eps in CASES:
        model = tiny_2d(head, seed)
        x0 = torch.tensor([a, b]).reshape(2, 1, 1)
        y = int(model(x0[None]).argmax())
        (res,) = verify_points(model, x0[None], torch.tensor([y]), eps, stop_at_sign=False)
        best, _, _ = brute(model, x0, y, eps)
        assert res.margin_lower <= best + 1e-6  # the exact minimum is below every grid point
        assert res.margin_lower >= best - 0.02 * (1 + abs(best))  # and the grid comes close to it
        assert res.margin_upper - res.margin_lower < 1e-4
        if abs(best) > 0.02:
            assert res.status == ("robust" if best > 0 else "not-robust")
        statuses.add(res.status)
        for method in ("crown", "crown-ibp", "ibp"):
            (cert,) = verify_points(model, x0[None], torch.tensor([y]), eps, method=method)
            assert cert.margin_lower <= res.margin_lower + 1e-7, method
            assert cert.status in ("robust", "unknown") or res.status == "not-robust"
            assert cert.status != "robust" or res.status == "robust"
    assert {"robust", "not-robust"} <= statuses  # both answers were really tested


def test_highs_and_scip_find_the_same_optimum():
    for seed, (a, b), eps in CASES[:6]:
        model = tiny_2d("linear", seed)
        x0 = torch.tensor([a, b]).reshape(1, 2, 1, 1)
        y = model(x0).argmax(1)
        (h,) = verify_points(model, x0, y, eps, solver="highs", stop_at_sign=False)
        (s,) = verify_points(model, x0, y, eps, solver="scip", stop_at_sign=False)
        assert h.status == s.status and abs(h.margin_lower - s.margin_lower) < 1e-5


def test_gm_detector_constraint_matches_brute_force():
    seen = set()
    for seed, (a, b), eps in CASES[::2]:
        model = tiny_2d("gm", seed)
        x0 = torch.tensor([a, b]).reshape(2, 1, 1)
        y = int(model(x0[None]).argmax())
        with torch.no_grad():
            scores = -model(grid(x0, eps).float()).max(1).values
        for thr in (float(scores.quantile(0.3)), float(scores.quantile(0.9))):
            best, pts, per_point = brute(model, x0, y, eps, thr)
            (res,) = verify_points(model, x0[None], torch.tensor([y]), eps, threshold=thr)
            seen.add(res.status)
            if res.status == "robust":  # no grid point is misclassified and unflagged
                assert best > -1e-6
            else:
                assert res.status == "not-robust"
                cex = res.counterexample
                assert cex is not None and (cex - x0).abs().max() <= eps + 1e-6
                with torch.no_grad():
                    logits = model(cex[None])[0]
                assert int(logits.argmax()) != y and float(-logits.max()) <= thr
            (opt,) = verify_points(model, x0[None], torch.tensor([y]), eps, threshold=thr, stop_at_sign=False)
            assert opt.margin_lower <= best + 1e-6
            if best < float("inf"):
                assert opt.margin_lower >= best - 0.02 * (1 + abs(best))
    assert {"robust", "not-robust"} <= seen


def test_outer_approximation_of_the_detector_ball_agrees_with_scip(monkeypatch):
    """HiGHS takes the detector's ball by cutting planes (its bounding box, then tangents at the
    solutions outside it); SCIP takes it as a quadratic constraint: same verdicts, same minimum,
    and some cases need the tangents, so the cut path is exercised."""
    cuts = []
    real = solvers._with_rows
    monkeypatch.setattr(solvers, "_with_rows", lambda prog, a, hi: cuts.append(len(hi)) or real(prog, a, hi))
    for seed, (a, b), eps in CASES[1::2]:
        model = tiny_2d("gm", seed)
        x0 = torch.tensor([a, b]).reshape(1, 2, 1, 1)
        y = model(x0).argmax(1)
        with torch.no_grad():
            scores = -model(grid(x0[0], eps).float()).max(1).values
        for thr in (float(scores.quantile(0.2)), float(scores.quantile(0.7))):
            for stop in (True, False):
                (h,) = verify_points(model, x0, y, eps, threshold=thr, solver="highs", stop_at_sign=stop)
                (s,) = verify_points(model, x0, y, eps, threshold=thr, solver="scip", stop_at_sign=stop)
                assert h.status == s.status, (seed, a, b, eps, thr, stop)
                if not stop and math.isfinite(s.margin_lower):
                    assert abs(h.margin_lower - s.margin_lower) <= 1e-4 * (1 + abs(s.margin_lower))
    box = 2 * 6  # the bounding box of the 6-D feature ball: the first round of every solve
    assert min(cuts) == box and max(cuts) > box


@pytest.fixture(scope="module")
def digits_mlp(digits):
    from robench.training import TrainConfig, train

    return train(TrainConfig(defense="softmax", dataset="digits", arch="mlp", epochs=12, seed=0, device="cpu"),
                 data=digits, quiet=True)


def test_points_proven_robust_survive_pgd(digits_mlp, digits):
    import robench

    x, y = digits.split("test", 12)
    eps = 0.02
    res = verify_points(digits_mlp, x, y, eps)
    robust = torch.tensor([r.robust for r in res])
    assert robust.sum() >= 4 and all(r.status in ("robust", "not-robust") for r in res)
    attack = robench.create_attack("pgd", digits_mlp, eps=eps, steps=50, restarts=3, objective="margin")
    x_adv = attack(x[robust], y[robust])
    assert (digits_mlp.predict(x_adv) == y[robust]).all()


def test_counterexamples_fool_the_float32_model():
    found = 0
    for seed, (a, b), eps in CASES:
        model = tiny_2d("linear", seed)
        x0 = torch.tensor([a, b]).reshape(1, 2, 1, 1)
        y = model(x0).argmax(1)
        (r,) = verify_points(model, x0, y, eps)  # no warm start: the program must find it
        if r.status != "not-robust":
            continue
        found += 1
        cex = r.counterexample
        assert cex.dtype == torch.float32 and cex.shape == x0[0].shape and r.targets_solved > 0
        assert (cex - x0[0]).abs().max() <= eps + 1e-6 and cex.min() >= 0 and cex.max() <= 1
        pred = int(model(cex[None]).argmax())
        assert pred != int(y) and pred == r.recheck_pred and r.recheck_margin < 0
        assert r.margin_upper < 0 and r.margin_lower <= r.margin_upper
    assert found >= 3


def test_an_attack_start_that_fools_decides_without_solving(digits_mlp, digits):
    import robench

    x, y = digits.split("test", 12)
    x_adv = robench.create_attack("pgd", digits_mlp, eps=0.15, steps=20, objective="margin")(x, y)
    fooled = digits_mlp.predict(x_adv) != y
    assert fooled.sum() >= 3
    res = verify_points(digits_mlp, x[fooled], y[fooled], 0.15, x_start=x_adv[fooled])
    for r, adv in zip(res, x_adv[fooled]):
        assert r.status == "not-robust" and r.targets_solved == 0 and r.n_binaries == 0
        assert torch.equal(r.counterexample, adv)


def test_a_counterexample_the_model_rejects_is_never_an_attack_success(monkeypatch):
    model = tiny_2d("linear", 4)
    x0 = torch.tensor([0.3, 0.6]).reshape(1, 2, 1, 1)
    y = model(x0).argmax(1)
    (honest,) = verify_points(model, x0, y, 0.3, tighten=False)
    assert honest.status == "not-robust" and honest.targets_solved > 0
    real = solvers.solve

    def lying_solver(prog, cost, const, *args, **kwargs):  # claims the clean point breaks the model
        out = real(prog, cost, const, *args, **kwargs)
        fake = np.zeros(prog.n_vars)
        fake[:2] = x0.reshape(-1).numpy()
        return solvers.SolveResult("negative", -1.0, -0.5, fake, out.seconds, out.nodes)

    monkeypatch.setattr(solvers, "solve", lying_solver)
    (res,) = verify_points(model, x0, y, 0.3, tighten=False, solver="highs")  # no branch and bound first
    assert res.status == "counterexample-rejected" and res.counterexample is None
    assert res.recheck_pred == int(y) and res.recheck_margin > 0


def test_time_limit_gives_unknown(monkeypatch):
    model = tiny_2d("linear", 4)
    x0 = torch.tensor([0.3, 0.6]).reshape(1, 2, 1, 1)
    y = model(x0).argmax(1)
    monkeypatch.setattr(solvers, "solve", lambda *a, **k: solvers.SolveResult(
        "unknown", -1.0, float("inf"), None, 0.0, 0))
    (res,) = verify_points(model, x0, y, 0.3, tighten=False, solver="highs")
    assert res.status == "unknown" and res.margin_lower < 0


def test_lp_tightening_is_sound_and_no_looser():
    torch.manual_seed(3)
    model = make_model(MLP(head="gm", in_channels=1, input_size=8, hidden=(24,), feature_dim=12), (1, 8, 8))
    net = extract_network(model)
    x0 = torch.rand(1, 8, 8)
    y = int(model(x0[None]).argmax())
    box = input_box(x0, 0.05)
    crown = compute_bounds(net, box, y, "crown")
    tight = tighten_bounds(net, crown, box, y)
    samples = box[0] + (box[1] - box[0]) * torch.rand((400, 1, 8, 8), dtype=DTYPE)
    values = net.forward(samples)
    for i in tight.lower:
        assert (tight.lower[i] >= crown.lower[i] - 1e-12).all() and (tight.upper[i] <= crown.upper[i] + 1e-12).all()
        assert (values[i] >= tight.lower[i] - 1e-9).all() and (values[i] <= tight.upper[i] + 1e-9).all()


def test_missing_solver_is_one_line(monkeypatch):
    model = tiny_2d("linear", 0)
    x0 = torch.tensor([0.3, 0.6]).reshape(1, 2, 1, 1)
    y = model(x0).argmax(1)
    real = importlib.import_module

    def no_solvers(name, *args):
        if name in ("highspy", "pyscipopt"):
            raise ImportError(f"No module named '{name}'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_solvers)
    with pytest.raises(UsageError) as info:
        verify_points(model, x0, y, 0.1, method="exact")
    assert "pip install -e '.[verify]'" in str(info.value) and "\n" not in str(info.value)
    (res,) = verify_points(model, x0, y, 0.1, method="crown")  # bounds need no solver
    assert res.status in ("robust", "unknown")


@pytest.fixture
def solve_threads(monkeypatch):
    """The names of the threads solvers.solve ran on (pool threads as "robench-verify")."""
    import threading

    threads = set()
    real = solvers.solve

    def recording(*args, **kwargs):
        threads.add(threading.current_thread().name.split("_")[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(solvers, "solve", recording)
    return threads


def test_targets_in_threads_give_the_sequential_verdicts(digits_mlp, digits, solve_threads):
    threads = solve_threads
    x, y = digits.split("test", 16)
    pick = [2, 10, 12, 15]  # points with several targets left open by the bounds at eps 0.12
    x, y, eps = x[pick], y[pick], 0.12
    one = verify_points(digits_mlp, x, y, eps, workers=1, solver="highs")
    assert threads == {"MainThread"}
    two = verify_points(digits_mlp, x, y, eps, workers=2, solver="highs")
    assert "robench-verify" in threads  # the targets really ran in the pool
    assert [r.status for r in one] == [r.status for r in two]
    assert {"robust", "not-robust"} <= {r.status for r in two}
    assert sum(r.targets_solved for r in two) >= sum(r.status == "robust" for r in two)
    for r, x0, label in zip(two, x, y):
        if r.status == "not-robust":
            assert int(digits_mlp(r.counterexample[None]).argmax()) != int(label)
            assert (r.counterexample - x0).abs().max() <= eps + 1e-6


def test_scip_programs_in_threads_agree(digits_mlp, digits, solve_threads):
    """SCIP programs go through the same pool (one solve at a time: SCIP crashed with two at once in
    threads); its verdicts are HiGHS's."""
    threads = solve_threads
    x, y = digits.split("test", 16)
    x, y = x[[2, 12]], y[[2, 12]]
    highs = verify_points(digits_mlp, x, y, 0.12, workers=1, solver="highs")
    scip = verify_points(digits_mlp, x, y, 0.12, solver="scip", workers=2)
    assert "robench-verify" in threads
    assert [r.status for r in highs] == [r.status for r in scip] == ["robust", "not-robust"]


@pytest.mark.parametrize("solver", ["highs", "scip"])
def test_a_cancelled_solve_stops_undecided(digits_mlp, digits, solver):
    """Once one target breaks a point the others' solves are cancelled: they stop, deciding nothing."""
    from robench.verify.milp import build_program

    x, y = digits.split("test", 16)
    net = extract_network(digits_mlp)
    label = int(y[2])
    box = input_box(x[2], 0.12)
    prog = build_program(net, tighten_bounds(net, compute_bounds(net, box, label), box, label))
    margins = compute_bounds(net, box, label).margin_lower
    t = int(torch.argmin(margins))
    coef = np.zeros(len(margins))
    coef[label], coef[t] = 1.0, -1.0
    cost, const = prog.objective(net.output, coef)
    assert prog.n_binaries > 0
    decided = solvers.solve(prog, cost, const, solver, 30.0)
    assert decided.status in ("positive", "negative")
    cancel = solvers.Cancel()
    cancel.set()
    stopped = solvers.solve(prog, cost, const, solver, 30.0, cancel=cancel)
    assert stopped.status == "unknown" and stopped.solution is None and stopped.nodes <= 1


def test_highs_from_many_threads_leaves_stdout_alone():
    """Target programs build HiGHS models in threads: the banner's redirect of fd 1 must not race
    (two threads saving and restoring it once left the process's stdout on /dev/null)."""
    import subprocess
    import sys

    script = ("import threading, highspy\n"
              "from robench.verify.solvers import quiet_highs\n"
              "def work():\n"
              "    for _ in range(40):\n"
              "        quiet_highs(highspy)\n"
              "ts = [threading.Thread(target=work) for _ in range(8)]\n"
              "[t.start() for t in ts]\n"
              "[t.join() for t in ts]\n"
              "print('stdout still here', flush=True)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "stdout still here\n"  # and no banner
