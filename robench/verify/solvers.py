"""The two mixed-integer solvers behind ``method="exact"``, imported only when used.

* HiGHS (``highspy``): the program is passed as arrays in one call. It is linear
  only, so the detector's convex quadratic constraint -- a ball in feature space --
  goes in by outer approximation (Kelley's cutting planes, the OA of convex MINLP):
  the ball's bounding box, then one tangent half-space at each solution that falls
  outside the ball, re-solved until a solution lies in the ball or none is left.
  Every half-space contains the ball, so a proof over them holds for the ball.
  Where the answer lies on the ball's boundary the cuts only creep towards it:
  after ``OA_ROUNDS`` rounds SCIP takes the program for the rest of the time.
* SCIP (``pyscipopt``): reads the same program (written by HiGHS as an MPS
  file, which SCIP parses in C: building tens of thousands of coefficients
  through Python objects costs more than solving) and adds the quadratic
  constraint as it is. Measured on the 784-64-32 GM MLP (mnist5k, eps 0.05,
  benchmarks/verify_mnist5k.md) HiGHS with the outer approximation decides points
  that SCIP leaves undecided at 60 s, so it is the default for both kinds.

Both minimise ``cost . v`` and, when ``stop_at_sign``, stop as soon as the sign
of the optimum (after adding ``const``) is known: a solution below 0 (a
candidate counterexample) or a dual bound above 0 (robust for this target).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np
import scipy.sparse as sp

from robench.errors import UsageError
from robench.verify.milp import Program

SOLVERS = ("highs", "scip")
_PACKAGES = {"highs": "highspy", "scip": "pyscipopt"}
SIGN_TOL = 1e-9  # a solution this far below 0 is a candidate counterexample (re-checked in float32)
# A target is proved only with this much margin: the model runs in float32, and a proof of a margin
# of 1e-9 in exact arithmetic says nothing about it. Logit units.
PROOF_MARGIN = 1e-6
_HIGHS_HEURISTICS = ("mip_heuristic_run_rins", "mip_heuristic_run_rens", "mip_heuristic_run_feasibility_jump",
                     "mip_heuristic_run_root_reduced_cost", "mip_allow_restart")  # objective values within this of 0 do not decide the sign


@dataclass
class SolveResult:
    """One solve: ``status`` is "negative" (a solution below 0), "positive" (dual bound above 0),
    "optimal" (solved to the end without deciding early) or "unknown" (time limit)."""

    status: str
    dual: float
    primal: float
    solution: Optional[np.ndarray]
    seconds: float
    nodes: int


@dataclass
class Quadratic:
    """The detector constraint ``1/2 |F v + c - mu|^2 <= threshold``."""

    features: Tuple[sp.csr_matrix, np.ndarray]
    mu: np.ndarray
    threshold: float


# SCIP crashed (a segfault in libscip) with two detector programs -- the quadratic constraint, SCIP's
# nonlinear machinery -- solving at once in threads of one process: SCIP solves one at a time.
_SCIP_LOCK = threading.Lock()


class Cancel:
    """Stops the solves of a point's other targets once one target decides the point.

    HiGHS polls it through its MIP interrupt callback between nodes; a SCIP solve
    (one at a time, see ``_SCIP_LOCK``) checks it before it starts.
    """

    def __init__(self) -> None:
        self.event = threading.Event()

    def set(self) -> None:
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()


def import_solver(name: str) -> Any:
    """The solver's module, or one line saying how to install it."""
    package = _PACKAGES[name]
    try:
        return importlib.import_module(package)
    except ImportError:
        raise UsageError(f"verify: the exact method needs the solver package {package}, which is not "
                         f"installed; install it with: pip install -e '.[verify]'") from None


def solve(prog: Program, cost: np.ndarray, const: float, solver: str, time_limit: float,
          start: Optional[np.ndarray] = None, stop_at_sign: bool = True,
          quadratic: Optional[Quadratic] = None, cancel: Optional[Cancel] = None) -> SolveResult:
    """Minimise ``cost . v + const`` over ``prog`` (stopped early, "unknown", once ``cancel`` is set)."""
    if solver == "highs" and quadratic is None:
        return _solve_highs(prog, cost, const, time_limit, start, stop_at_sign, cancel)
    if solver == "scip":
        return _solve_scip(prog, cost, const, time_limit, start, stop_at_sign, quadratic, cancel)
    t0 = time.perf_counter()
    scip = _available("scip")
    res = _solve_highs_oa(prog, cost, const, time_limit, stop_at_sign, quadratic, cancel,
                          OA_ROUNDS if scip else None)
    if res.status != "stalled":
        return res
    # The cuts approach the ball without reaching it (a counterexample, or the optimum, on its
    # boundary): SCIP takes the rest of the time, with the bound found so far.
    rest = _solve_scip(prog, cost, const, time_limit - (time.perf_counter() - t0), start, stop_at_sign,
                       quadratic, cancel)
    rest.dual, rest.nodes, rest.seconds = max(rest.dual, res.dual), rest.nodes + res.nodes, time.perf_counter() - t0
    return rest


def _available(name: str) -> bool:
    try:
        import_solver(name)
    except UsageError:
        return False
    return True


_QUIET_LOCK = threading.Lock()
_BANNER_SHOWN = []  # non-empty once HiGHS has been constructed in this process


def quiet_highs(highspy: Any) -> Any:
    """``highspy.Highs()`` without the banner HiGHS prints on the process's stdout at its first
    construction (before any option can silence it): ``--json`` output must stay parseable.

    File descriptor 1 is redirected only around the first construction, under a lock: two
    threads each saving and restoring it (target programs in parallel) once left the process's
    stdout on /dev/null for good (seen in benchmarks/bench_bab.py)."""
    import sys

    with _QUIET_LOCK:
        if _BANNER_SHOWN:
            return highspy.Highs()
        sys.stdout.flush()
        saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 1)
            h = highspy.Highs()
            _BANNER_SHOWN.append(True)
            return h
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(devnull)


def highs_model(prog: Program, cost: np.ndarray, relax: bool = False):
    """A ``highspy.Highs`` holding ``prog`` with objective ``cost`` (quiet, one thread)."""
    highspy = import_solver("highs")
    h = quiet_highs(highspy)
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    lp = highspy.HighsLp()
    csc = prog.rows.tocsc()
    lp.num_col_, lp.num_row_ = prog.n_vars, csc.shape[0]
    lp.col_cost_ = np.asarray(cost, dtype=float)
    lp.col_lower_, lp.col_upper_ = prog.lb.astype(float), prog.ub.astype(float)
    lp.row_lower_ = np.where(np.isinf(prog.row_lo), -highspy.kHighsInf, prog.row_lo)
    lp.row_upper_ = np.where(np.isinf(prog.row_hi), highspy.kHighsInf, prog.row_hi)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_ = csc.indptr, csc.indices
    lp.a_matrix_.value_ = csc.data.astype(float)
    if not relax and prog.n_binaries:
        lp.integrality_ = [highspy.HighsVarType.kInteger if b else highspy.HighsVarType.kContinuous
                           for b in prog.integer]
    h.passModel(lp)
    return h


def _solve_highs(prog, cost, const, time_limit, start, stop_at_sign, cancel=None) -> SolveResult:
    highspy = import_solver("highs")
    t0 = time.perf_counter()
    h = highs_model(prog, cost)
    h.setOptionValue("time_limit", max(float(time_limit), 0.01))
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1e-7)
    h.setOptionValue("presolve", "off")  # measured: 0.6 s of presolve per solve, no reduction found
    # Measured: on a 784-64-32 MLP the sub-MIP heuristics (RINS, RENS, ...) took 7.5 of 8 s of a
    # one-node proof; the attack's warm start is a better source of solutions.
    for option in _HIGHS_HEURISTICS:
        h.setOptionValue(option, False)
    if stop_at_sign:
        h.setOptionValue("objective_bound", -const + PROOF_MARGIN)  # prune nodes that cannot go below it
        h.setOptionValue("objective_target", -const - SIGN_TOL)  # stop at the first solution below 0
    if start is not None:
        sol = highspy.HighsSolution()
        sol.col_value = list(start)
        h.setSolution(sol)
    if cancel is not None:  # polled by HiGHS between nodes (and before the first)
        h.cbMipInterrupt.subscribe(lambda event: event.interrupt() if cancel.is_set() else None)
    h.run()
    status = h.modelStatusToString(h.getModelStatus())
    info = h.getInfo()
    has_sol = info.primal_solution_status == 2  # kSolutionStatusFeasible
    primal = info.objective_function_value + const if has_sol else math.inf
    dual = info.mip_dual_bound + const if prog.n_binaries else primal
    solution = np.asarray(h.getSolution().col_value) if has_sol else None
    seconds, nodes = time.perf_counter() - t0, int(max(info.mip_node_count, 0))
    if status == "Infeasible" and not stop_at_sign:  # no cutoff: no point at all (the detector's ball)
        return SolveResult("positive", math.inf, math.inf, None, seconds, nodes)
    if status in ("Infeasible", "Objective bound"):  # nothing below the cutoff: positive
        # The cutoff proved cost . v + const >= PROOF_MARGIN; HiGHS reports no finite bound then.
        bound = dual if math.isfinite(dual) and dual > PROOF_MARGIN else PROOF_MARGIN
        return SolveResult("positive", bound, primal, None, seconds, nodes)
    return _classify(status == "Optimal", primal, dual, solution, seconds, nodes)


BALL_TOL = 1e-7  # a solution this far (relatively) outside the ball counts as in it: re-checked in float32
# Rounds of cuts before SCIP takes over (when installed). Measured on the 784-64-32 GM MLP: the
# targets HiGHS decides take 1-2 rounds; where the answer lies on the ball's boundary the cuts
# only creep towards it (849 rounds in 10 s on a 2-D test network without deciding).
OA_ROUNDS = 10


def _solve_highs_oa(prog, cost, const, time_limit, stop_at_sign, quad: Quadratic, cancel=None,
                    rounds: Optional[int] = None) -> SolveResult:
    """The program with ``quad`` by outer approximation (see the module docstring); after
    ``rounds`` rounds without a decision, status "stalled" with the bound found so far.

    No warm start: the attack's best point lies outside the target's ball (else it
    would have decided the point), and HiGHS given an infeasible start was seen to
    report "objective target reached" with a solution that violates the program.
    """
    t0, nodes = time.perf_counter(), 0
    if quad.threshold < 0:  # the ball is empty: no unflagged point for this target
        return SolveResult("positive", math.inf, math.inf, None, 0.0, 0)
    m, c = quad.features
    m, off = sp.csr_matrix(m), np.asarray(c, dtype=float) - quad.mu  # F v + off = feature - mu
    radius = math.sqrt(2.0 * quad.threshold)
    radius += 1e-9 * (1.0 + radius)  # rounding must not cut into the ball
    normals = [np.eye(m.shape[0]), -np.eye(m.shape[0])]  # its bounding box
    dual = -math.inf
    while True:
        if rounds is not None and len(normals) - 2 >= rounds:
            return SolveResult("stalled", dual, math.inf, None, time.perf_counter() - t0, nodes)
        left = time_limit - (time.perf_counter() - t0)
        if left <= 0 or (cancel is not None and cancel.is_set()):
            return SolveResult("unknown", dual, math.inf, None, time.perf_counter() - t0, nodes)
        g = np.vstack(normals)
        res = _solve_highs(_with_rows(prog, sp.csr_matrix(g) @ m, radius - g @ off), cost, const, left, None,
                           stop_at_sign, cancel)
        nodes += res.nodes
        res.seconds, res.nodes = time.perf_counter() - t0, nodes
        dual = max(dual, res.dual)  # each relaxation contains the ball: its bound holds
        res.dual = dual
        if res.solution is None or res.status == "positive":
            return res
        gap = m @ res.solution + off
        dist = float(np.linalg.norm(gap))
        if 0.5 * dist * dist <= quad.threshold + BALL_TOL * (1.0 + abs(quad.threshold)):
            return res
        if res.status == "unknown":  # out of time with a solution outside the ball: no candidate
            return SolveResult("unknown", dual, math.inf, None, res.seconds, nodes)
        normals.append((gap / dist)[None])  # the tangent half-space where the ray to it leaves the ball


def _with_rows(prog: Program, a: sp.csr_matrix, hi: np.ndarray) -> Program:
    """``prog`` with the rows ``a v <= hi`` added."""
    return dataclasses.replace(prog, rows=sp.vstack([prog.rows, a]).tocsr(),
                               row_lo=np.concatenate([prog.row_lo, np.full(len(hi), -np.inf)]),
                               row_hi=np.concatenate([prog.row_hi, hi]))


def _classify(finished: bool, primal: float, dual: float, solution, seconds: float, nodes: int) -> SolveResult:
    if solution is not None and primal < -SIGN_TOL:
        return SolveResult("negative", dual, primal, solution, seconds, nodes)
    if math.isfinite(dual) and dual >= PROOF_MARGIN:
        return SolveResult("positive", dual, primal, solution, seconds, nodes)
    return SolveResult("optimal" if finished else "unknown", dual, primal, solution, seconds, nodes)


def _solve_scip(prog, cost, const, time_limit, start, stop_at_sign, quadratic, cancel=None) -> SolveResult:
    t0 = time.perf_counter()
    with _SCIP_LOCK:
        if cancel is not None and cancel.is_set():
            return SolveResult("unknown", -math.inf, math.inf, None, 0.0, 0)
        left = time_limit - (time.perf_counter() - t0)  # the wait for the lock counts
        if left <= 0:
            return SolveResult("unknown", -math.inf, math.inf, None, time.perf_counter() - t0, 0)
        res = _solve_scip_locked(prog, cost, const, left, start, stop_at_sign, quadratic)
    res.seconds = time.perf_counter() - t0
    return res


def _solve_scip_locked(prog, cost, const, time_limit, start, stop_at_sign, quadratic) -> SolveResult:
    scip = import_solver("scip")
    t0 = time.perf_counter()
    model, xs = _scip_model(scip, prog, cost)
    model.setParam("limits/time", max(float(time_limit), 0.01))
    model.setParam("limits/gap", 0.0)
    # Measured on the 784-64-32 MLP: SCIP's default root separation ran 30 s without leaving the
    # root on programs HiGHS closed in 4 s; fast separation decided them in about 5 s.
    model.setSeparating(scip.SCIP_PARAMSETTING.FAST)
    if stop_at_sign:
        model.setParam("limits/primal", -const - SIGN_TOL)
        model.setParam("limits/dual", -const + PROOF_MARGIN)
    extra = _add_quadratic(scip, model, xs, quadratic) if quadratic is not None else []
    if start is not None:
        sol = model.createSol()
        for var, value in zip(xs, start):
            model.setSolVal(sol, var, float(value))
        for var, value in extra_values(quadratic, start, extra):
            model.setSolVal(sol, var, value)
        model.addSol(sol, free=True)
    # Without the GIL where this pyscipopt has it: HiGHS programs of the point go on meanwhile.
    (model.optimizeNogil if hasattr(model, "optimizeNogil") else model.optimize)()
    status = model.getStatus()
    n_sols = model.getNSols()
    primal = model.getPrimalbound() + const if n_sols else math.inf
    dual = model.getDualbound() + const
    solution = np.array([model.getVal(v) for v in xs]) if n_sols else None
    nodes = int(model.getNNodes())
    seconds = time.perf_counter() - t0
    model.freeProb()
    if status == "infeasible":  # only with the quadratic constraint: no unflagged point for this target
        return SolveResult("positive", math.inf, math.inf, None, seconds, nodes)
    return _classify(status == "optimal", primal, dual, solution, seconds, nodes)


def _scip_model(scip, prog: Program, cost: np.ndarray):
    h = highs_model(prog, cost)
    fd, path = tempfile.mkstemp(suffix=".mps", prefix="robench-verify-")
    os.close(fd)
    try:
        h.writeModel(path)
        model = scip.Model()
        model.hideOutput()
        model.setParam("parallel/maxnthreads", 1)
        model.readProblem(path)
    finally:
        os.unlink(path)
    by_name = {v.name: v for v in model.getVars()}
    names = [h.getColName(j)[1] for j in range(prog.n_vars)]
    return model, [by_name[n] for n in names]


def _add_quadratic(scip, model, xs, quad: Quadratic):
    m, c = quad.features
    gs = []
    for d in range(m.shape[0]):
        row = m.getrow(d)
        g = model.addVar(name=f"g{d}", lb=None, ub=None)
        terms = scip.quicksum(float(w) * xs[j] for j, w in zip(row.indices, row.data))
        model.addCons(g - terms == float(c[d] - quad.mu[d]))
        gs.append(g)
    model.addCons(scip.quicksum(g * g for g in gs) <= 2.0 * quad.threshold)
    return gs


def extra_values(quad: Optional[Quadratic], start: np.ndarray, extra) -> list:
    if quad is None:
        return []
    m, c = quad.features
    values = m @ start + c - quad.mu
    return list(zip(extra, (float(v) for v in values)))
