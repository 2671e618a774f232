"""``verify_points``: per-point exact verification or certified bounds for a RobustModel.

The question, per point ``(x, y)`` and budget eps: is there an ``x'`` in the
Linf ball intersected with [0, 1] with ``z_t(x') >= z_y(x')`` for some
``t != y`` (and, with a gm-likelihood ``threshold``, ``1/2 |f(x') - mu_t|^2 <=
threshold``, i.e. misclassified AND not flagged)?

``exact`` answers it by one mixed-integer program per target class that the
bounds leave open, not one program with a binary per target: each per-target
program is the tight big-M program itself (no second big-M over the choice of
target), its solve stops as soon as the sign of its optimum is known, targets
that CROWN (after LP tightening) certifies are skipped, the attack's target
comes first so a non-robust point usually costs one solve, and with the
detector the quadratic constraint is per target anyway. With ``solver="auto"``
a target goes to branch and bound over ReLU splits first (bab.py: far
more subdomains per second than the solver's nodes), the program to the
solver only when that leaves it open. Every counterexample is
re-checked in float32 on the real model; one that does not fool it gives
``counterexample-rejected``, never ``not-robust``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Sequence

import numpy as np
import torch

from robench.errors import UsageError
from robench.params import Range, check_choice
from robench.verify.bounds import Bounds, compute_bounds, input_box
from robench.verify.extract import extract_network
from robench.verify.network import DTYPE, Network, numel
from robench.verify.solvers import PROOF_MARGIN  # no solver is imported here: they load on first use
METHODS = ("exact", "crown", "crown-ibp", "ibp")
NORMS = ("linf",)
SOLVER_CHOICES = ("auto", "highs", "scip")
STATUSES = ("robust", "not-robust", "unknown", "counterexample-rejected")
SAFETY = 1e-4  # the retry after a rejected counterexample asks for this much margin (and threshold) to spare


@dataclass
class VerifyResult:
    """The verdict on one point.

    Attributes:
        status: ``robust`` (proved), ``not-robust`` (a counterexample that fools
            the float32 model), ``unknown`` (not decided: time limit, or bounds
            too loose for crown/ibp), ``counterexample-rejected`` (the program's
            counterexample does not fool the float32 model and nothing else was found).
        margin_lower: a proven lower bound on ``min_t z_y - z_t`` over the ball
            (over its unflagged part with a threshold; inf when no point is unflagged).
        margin_upper: the smallest margin at a concrete point found (inf if none).
        counterexample: (C, H, W) float32 input that fools the model, or None.
        recheck_pred, recheck_margin, recheck_score: the float32 model's class,
            ``z_y - max_{k != y} z_k`` and detector score at the checked candidate.
        target: the class of the counterexample's program, or None.
        seconds: wall-clock seconds for the point (what ``time_limit`` bounds);
            cpu_seconds: this process's CPU seconds for it (the same on an idle
            machine, smaller on a loaded one).
        solver: what decided the programs: ``bab+highs`` (branch and bound first,
            HiGHS for what it leaves open), ``highs`` or ``scip``; nodes: the
            solver's branch-and-bound nodes; domains: the subdomains bab bounded.
    """

    index: int
    label: int
    status: str
    method: str
    eps: float
    threshold: Optional[float]
    margin_lower: float
    margin_upper: float
    counterexample: Optional[torch.Tensor]
    recheck_pred: Optional[int]
    recheck_margin: Optional[float]
    recheck_score: Optional[float]
    target: Optional[int]
    seconds: float
    cpu_seconds: float
    solver: Optional[str]
    n_binaries: int
    targets_solved: int
    targets_certified: int
    nodes: int
    domains: int = 0

    @property
    def robust(self) -> bool:
        return self.status == "robust"

    def as_row(self) -> Dict[str, object]:
        """Every field but the counterexample tensor (for tables and JSON)."""
        row = {k: v for k, v in self.__dict__.items() if k != "counterexample"}
        row["has_counterexample"] = self.counterexample is not None
        return row


@dataclass(frozen=True)
class VerifyConfig:
    """The settings of one verification run (checked on construction)."""

    eps: float
    method: str = "exact"
    norm: str = "linf"
    threshold: Optional[float] = None
    time_limit: float = 60.0
    solver: str = "auto"
    tighten: bool = True
    stop_at_sign: bool = True
    workers: Optional[int] = None

    ranges: ClassVar[Dict[str, Range]] = {
        "eps": Range(float, 0.0, 1.0),
        "time_limit": Range(float, 0.0, None, low_open=True),
        "threshold": Range(float, None, None, optional=True),
        "workers": Range(int, 1, None, optional=True),
    }

    def __post_init__(self) -> None:
        for name, rng in self.ranges.items():
            object.__setattr__(self, name, rng.check("verify", name, getattr(self, name)))
        check_choice("verify", "method", self.method, METHODS)
        check_choice("verify", "norm", self.norm, NORMS)
        check_choice("verify", "solver", self.solver, SOLVER_CHOICES)

    @property
    def resolved_workers(self) -> int:
        """Target programs solved at once: ``workers``, or the cores this process may use."""
        return self.workers if self.workers is not None else available_cores()

    @property
    def resolved_solver(self) -> str:
        """``auto`` is HiGHS, with the detector's constraint by outer approximation (solvers.py)."""
        return "highs" if self.solver == "auto" else self.solver

    def uses_bab(self, net: Network) -> bool:
        """``auto``, answering by sign, on a chain of affine maps and ReLUs: each target goes
        to branch and bound (bab.py) first, to the solver for what it leaves open."""
        from robench.verify.bab import supports

        return self.method == "exact" and self.solver == "auto" and self.stop_at_sign and supports(net)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the platform tells)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def supported(model: torch.nn.Module) -> Optional[str]:
    """None when the verifier can encode ``model``, else the one-line reason."""
    try:
        extract_network(model)
    except UsageError as exc:
        return str(exc)
    return None


def check_supported(model: torch.nn.Module, method: str = "exact", threshold: Optional[float] = None) -> Network:
    """The model's graph, or a UsageError naming what is not supported (before any work)."""
    check_choice("verify", "method", method, METHODS)
    if threshold is not None and not getattr(model, "is_gm", False):
        raise UsageError("verify: a detector threshold needs a Gaussian-mixture (GM) model with the "
                         "gm-likelihood detector; this model has a linear head")
    net = extract_network(model)
    if method == "exact":
        from robench.verify.solvers import import_solver

        import_solver("highs")
    return net


def verify_points(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                  method: str = "exact", norm: str = "linf", threshold: Optional[float] = None,
                  time_limit: float = 60.0, x_start: Optional[torch.Tensor] = None,
                  solver: str = "auto", tighten: bool = True, stop_at_sign: bool = True,
                  progress: bool = False, workers: Optional[int] = None) -> List[VerifyResult]:
    """Verify each point of a batch.

    Args:
        model: a :class:`~robench.models.RobustModel` (inputs in [0, 1]).
        x: (N, C, H, W) points in [0, 1]; y: (N,) labels.
        eps: the Linf budget in pixel space.
        method: ``exact`` (MILP), ``crown``, ``crown-ibp`` or ``ibp``.
        norm: ``linf`` (the only one supported).
        threshold: gm-likelihood threshold (score = min_k 1/2 |f - mu_k|^2, flagged
            when above): verify "misclassified and not flagged"; None for plain robustness.
        time_limit: seconds of solving per point (exact).
        x_start: optional (N, C, H, W) points of the ball (an attack's best), tried
            first and used as the solver's warm start.
        solver: ``auto``, ``highs`` or ``scip``. ``auto``: with ``stop_at_sign``, each target
            on a chain of affine maps and ReLUs goes to branch and bound (bab.py) first and
            to HiGHS for what it leaves open; else HiGHS. With a threshold HiGHS takes the
            detector's ball by outer approximation, SCIP as a quadratic constraint.
        tighten: LP-tighten intermediate bounds before the program (exact).
        stop_at_sign: stop each solve once the sign of its optimum is known; False
            solves to optimality so the margins are the exact minimum.
        progress: show a progress bar on a terminal.
        workers: target programs of a point solved at once, in threads (exact; the solvers
            release the GIL); None: the cores this process may use. The time limit is
            wall-clock, so more workers decide more points within it.
    """
    cfg = VerifyConfig(eps=eps, method=method, norm=norm, threshold=threshold, time_limit=time_limit,
                       solver=solver, tighten=tighten, stop_at_sign=stop_at_sign, workers=workers)
    x, y, x_start = _check_inputs(model, x, y, x_start)
    net = check_supported(model, cfg.method, cfg.threshold)
    if cfg.method == "exact" and cfg.resolved_solver == "scip":
        from robench.verify.solvers import import_solver

        import_solver("scip")
    from robench.progress import progress_bar

    bar = progress_bar(total=len(x), desc=f"verify {cfg.method}", unit="pt", disable=not progress)
    results = []
    for i in range(len(x)):
        start = None if x_start is None else x_start[i]
        results.append(_PointVerifier(model, net, cfg).run(i, x[i], int(y[i]), start))
        bar.update(1)
    bar.close()
    return results


def _check_inputs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, x_start: Optional[torch.Tensor]):
    """x, y and x_start checked (one UsageError line each) and moved to CPU float32 / int64."""
    shape = tuple(int(s) for s in model.info.input_shape)
    if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != shape or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise UsageError(f"verify: x must be float images of shape (N, {', '.join(map(str, shape))}), got {got}")
    if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
        raise UsageError("verify: x must lie in [0, 1]")
    y = torch.as_tensor(y)
    if y.dim() != 1 or len(y) != len(x) or y.is_floating_point():
        raise UsageError(f"verify: y must be {len(x)} integer labels, got shape {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= model.num_classes):
        raise UsageError(f"verify: labels must be in [0, {model.num_classes - 1}]")
    if x_start is not None and (not isinstance(x_start, torch.Tensor) or x_start.shape != x.shape):
        raise UsageError(f"verify: x_start must have the shape of x {tuple(x.shape)}")
    return x.detach().cpu().float(), y.long().cpu(), None if x_start is None else x_start.detach().cpu().float()


class _PointVerifier:
    """One point's verification: candidates, bounds, then one program per open target."""

    def __init__(self, model, net: Network, cfg: VerifyConfig) -> None:
        self.model, self.net, self.cfg = model, net, cfg
        self.lock = threading.Lock()  # target programs run in threads: their bookkeeping takes turns

    def run(self, index: int, x0: torch.Tensor, y: int, x_start: Optional[torch.Tensor]) -> VerifyResult:
        self.t0, self.cpu0, self.y, self.x0 = time.perf_counter(), time.process_time(), y, x0
        self.box = input_box(x0, self.cfg.eps)
        lo32, hi32 = (x0 - self.cfg.eps).clamp(min=0.0), (x0 + self.cfg.eps).clamp(max=1.0)
        self.box32 = (lo32, hi32)
        self.out = VerifyResult(index, y, "unknown", self.cfg.method, self.cfg.eps, self.cfg.threshold,
                                -math.inf, math.inf, None, None, None, None, None, 0.0, 0.0, None, 0, 0, 0, 0)
        candidates = [x0] + ([torch.max(torch.min(x_start, hi32), lo32)] if x_start is not None else [])
        for cand in candidates:
            if self._try_candidate(cand, None):
                return self._finish("not-robust")
        bounds = compute_bounds(self.net, self.box, y, "crown" if self.cfg.method == "exact" else self.cfg.method)
        open_targets = self._open_targets(bounds)
        self.lower = {t: float(bounds.margin_lower[t]) for t in range(len(bounds.margin_lower)) if t != y}
        if open_targets and self.cfg.method == "exact" and self.cfg.tighten:
            from robench.verify.tighten import lp_margin_bounds, tighten_bounds

            bounds = tighten_bounds(self.net, bounds, self.box, y)
            self.lower = {t: float(bounds.margin_lower[t]) for t in self.lower}
            for t, value in lp_margin_bounds(self.net, bounds, y, self._open_targets(bounds)).items():
                self.lower[t] = max(self.lower[t], value)
            open_targets = [t for t in self._open_targets(bounds) if self.lower[t] < PROOF_MARGIN]
        for t in self._unreachable(bounds):
            self.lower[t] = math.inf
        self.out.targets_certified = len(self.lower) - len(open_targets)
        if self.cfg.method == "exact" and not self.cfg.stop_at_sign:
            # The exact minimum: certified targets too, unless they cannot hold it (see _exact).
            open_targets = [t for t, low in self.lower.items() if low < math.inf]
        if not open_targets:
            return self._finish("robust")
        if self.cfg.method != "exact":
            return self._finish("unknown")
        return self._exact(bounds, open_targets, candidates[-1])

    # -- candidates and the float32 re-check -------------------------------------------
    def _try_candidate(self, cand: torch.Tensor, target: Optional[int]) -> bool:
        """Re-check ``cand`` on the float32 model; True (and recorded) when it is a counterexample."""
        self.out.margin_upper = min(self.out.margin_upper, self._margin64(cand))
        with torch.no_grad():
            f, logits = self.model.features_and_logits(cand.unsqueeze(0).to(self.model.device))
        logits = logits[0].float().cpu()
        pred = int(logits.argmax())
        others = torch.cat([logits[:self.y], logits[self.y + 1:]])
        margin = float(logits[self.y] - others.max())
        score = float(-logits.max()) if self.model.is_gm else None
        fools = pred != self.y and (self.cfg.threshold is None or score <= self.cfg.threshold)
        if fools or target is not None:
            self.out.recheck_pred, self.out.recheck_margin, self.out.recheck_score = pred, margin, score
            self.out.target = target if target is not None else pred
        if fools:
            self.out.counterexample = cand.clone()
        return fools

    def _margin64(self, cand: torch.Tensor) -> float:
        """min over targets (that the detector lets through) of z_y - z_t at ``cand``, in float64."""
        values = self.net.forward(cand.to(DTYPE).unsqueeze(0))
        z = values[self.net.output][0]
        margins = z[self.y] - z
        ok = torch.ones_like(margins, dtype=torch.bool)
        ok[self.y] = False
        if self.cfg.threshold is not None:
            f = values[self.net.features][0]
            ok &= 0.5 * ((f - self.net.mu) ** 2).sum(1) <= self.cfg.threshold
        return float(margins[ok].min()) if ok.any() else math.inf

    # -- bounds -----------------------------------------------------------------------------
    def _unreachable(self, bounds: Bounds) -> List[int]:
        """Targets whose class mean no feature in the bounds' box comes within the threshold of."""
        if self.cfg.threshold is None:
            return []
        lo, hi = bounds.lower[self.net.features], bounds.upper[self.net.features]
        mu = self.net.mu
        gap = torch.clamp(lo - mu, min=0) + torch.clamp(mu - hi, min=0)  # per-coordinate distance to the box
        far = 0.5 * (gap ** 2).sum(1) > self.cfg.threshold
        return [t for t in range(len(mu)) if t != self.y and bool(far[t])]

    def _open_targets(self, bounds: Bounds) -> List[int]:
        far = set(self._unreachable(bounds))
        return [t for t in range(len(bounds.margin_lower))
                if t != self.y and t not in far and float(bounds.margin_lower[t]) < PROOF_MARGIN]

    # -- the programs --------------------------------------------------------------------------
    def _exact(self, bounds: Bounds, targets: Sequence[int], warm: torch.Tensor) -> VerifyResult:
        from robench.verify.milp import build_program

        prog = build_program(self.net, bounds)
        self.out.solver, self.out.n_binaries = self.cfg.resolved_solver, prog.n_binaries
        self.bab = None
        if self.cfg.uses_bab(self.net):
            from robench.verify.bab import MarginBab

            self.bab = MarginBab(self.net, bounds, self.y, self.cfg.threshold)
            self.out.solver = f"bab+{self.out.solver}"
        start = prog.values(self.net, warm)
        z = self.net.forward(warm.to(DTYPE).unsqueeze(0))[self.net.output][0]
        order = sorted(targets, key=lambda t: float(z[self.y] - z[t]))  # the attack's target first
        verdicts = self._targets(prog, order, start, self.cfg.resolved_workers)
        if "broken" in verdicts and self.cfg.stop_at_sign:
            return self._finish("not-robust")
        if "broken" in verdicts:  # solving on (stop_at_sign False): the minimum may be another target's
            return self._finish("not-robust")
        if "timeout" in verdicts or "open" in verdicts:
            return self._finish("unknown")
        return self._finish("counterexample-rejected" if "rejected" in verdicts else "robust")

    def _targets(self, prog, order: Sequence[int], start: np.ndarray, workers: int) -> List[str]:
        """The verdicts on ``order``'s targets, ``workers`` programs at a time (in that order); with
        stop_at_sign, once one target breaks the point the others' solves are cancelled and the
        targets not yet started are skipped."""
        from robench.verify.solvers import Cancel

        self.cancel = Cancel()
        if workers <= 1 or len(order) <= 1:
            verdicts = []
            for t in order:
                verdict = self._target(prog, t, start)
                if verdict == "skipped":
                    continue
                verdicts.append(verdict)
                if verdict == "timeout" or (verdict == "broken" and self.cfg.stop_at_sign):
                    break
            return verdicts
        with ThreadPoolExecutor(max_workers=min(workers, len(order)), thread_name_prefix="robench-verify") as pool:
            return [v for v in pool.map(lambda t: self._target(prog, t, start), order) if v != "skipped"]

    def _target(self, prog, t: int, start: np.ndarray) -> str:
        """One target's program: "proved", "broken", "rejected", "open", "timeout" or "skipped"."""
        if self.cancel.is_set() or (not self.cfg.stop_at_sign and self.lower[t] >= self.out.margin_upper):
            return "skipped"  # another target broke the point, or this one cannot hold the minimum
        verdict = self._target_verdict(prog, t, start)
        if verdict == "broken" and self.cfg.stop_at_sign:
            self.cancel.set()
        return verdict

    def _target_verdict(self, prog, t: int, start: np.ndarray) -> str:
        from robench.verify.solvers import SIGN_TOL

        if self.bab is not None:
            verdict = self._bab_verdict(t)
            if verdict is not None:
                return verdict
        res = self._solve(prog, t, start, safety=0.0)
        if res is None:
            return "timeout"
        if res.status != "unknown":
            self.lower[t] = max(self.lower[t], res.dual)
        if res.solution is None or res.primal > SIGN_TOL:
            if res.solution is not None:
                margin = self._margin64(self._input_of(res.solution))
                with self.lock:
                    self.out.margin_upper = min(self.out.margin_upper, margin)
            return "proved" if self.lower[t] >= PROOF_MARGIN else "open"
        with self.lock:
            if self._try_candidate(self._input_of(res.solution), t):
                return "broken"
        # Optima sit on the boundary (margin 0, score = threshold), where float32 may disagree:
        # look once more for a counterexample with room to spare on both.
        retry = self._solve(prog, t, start, safety=SAFETY)
        if retry is not None and retry.solution is not None and retry.primal < 0:
            with self.lock:
                if self._try_candidate(self._input_of(retry.solution), t):
                    return "broken"
        return "rejected"

    def _bab_verdict(self, t: int) -> Optional[str]:
        """Branch and bound on target ``t`` with the point's time: "proved", "broken", "timeout",
        or None (undecided, or a candidate the float32 model rejects) for the solver to go on."""
        left = self.cfg.time_limit - (time.perf_counter() - self.t0)
        if left <= 0:
            return "timeout"
        res = self.bab.run(t, left, self.cancel)
        with self.lock:
            self.out.domains += res.domains
            self.out.targets_solved += res.status == "positive"
        if res.status == "positive":
            self.lower[t] = max(self.lower[t], res.bound)
            return "proved"
        if res.status == "negative":
            cand = torch.max(torch.min(res.candidate.float(), self.box32[1]), self.box32[0])
            with self.lock:
                if self._try_candidate(cand, t):
                    self.out.targets_solved += 1
                    return "broken"
        return None

    def _solve(self, prog, t: int, start: np.ndarray, safety: float):
        from robench.verify.solvers import Quadratic, solve

        left = self.cfg.time_limit - (time.perf_counter() - self.t0)
        if left <= 0:
            return None
        coef = np.zeros(self.net.nodes[self.net.output].shape[0])
        coef[self.y], coef[t] = 1.0, -1.0
        cost, const = prog.objective(self.net.output, coef)
        quad = None
        if self.cfg.threshold is not None:
            thr = self.cfg.threshold - safety * (1.0 + abs(self.cfg.threshold))
            quad = Quadratic(prog.exprs[self.net.features], self.net.mu[t].numpy(), thr)
        res = solve(prog, cost, const + safety, self.cfg.resolved_solver, left, start, self.cfg.stop_at_sign or safety > 0, quad,
                    cancel=self.cancel)
        with self.lock:
            self.out.targets_solved += safety == 0
            self.out.nodes += res.nodes
        if safety:
            res.primal -= safety
        return res

    def _input_of(self, solution: np.ndarray) -> torch.Tensor:
        n = numel(self.net.input_shape)
        cand = torch.from_numpy(np.asarray(solution[:n], dtype=np.float64)).reshape(self.net.input_shape)
        return torch.max(torch.min(cand.float(), self.box32[1]), self.box32[0])

    def _finish(self, status: str) -> VerifyResult:
        out = self.out
        out.status = status
        if status == "not-robust":
            out.margin_lower = min(getattr(self, "lower", {}).values(), default=-math.inf)
            out.margin_lower = min(out.margin_lower, out.margin_upper)
        else:
            out.margin_lower = min(self.lower.values()) if getattr(self, "lower", None) else -math.inf
        if status == "robust" and not out.margin_lower >= PROOF_MARGIN:
            raise AssertionError("a robust verdict without a positive margin bound")  # a bug, never a user error
        out.seconds = time.perf_counter() - self.t0
        out.cpu_seconds = time.process_time() - self.cpu0
        return out
