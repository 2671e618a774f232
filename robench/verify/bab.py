"""Branch and bound over ReLU splits with optimised linear bounds, for one target's margin.

The mixed-integer program's relaxation is weak where many ReLUs are unstable
(the 784-64-32 GM MLP at eps 0.05: LP bound -6.35 on a target whose true
minimum is above +3.8), and HiGHS's nodes cost about 20 ms each. This module
answers the same question -- is ``min z_y - z_t`` over the input box at least
``PROOF_MARGIN``? -- by splitting unstable ReLUs into their active and inactive
halves (Bunel et al. 2018, https://arxiv.org/abs/1711.00455; BaBSR branching)
and bounding thousands of subdomains at once in torch, each by
back-substitution with

* optimised lower slopes of the unstable ReLUs (alpha-CROWN, Xu et al. 2021,
  https://arxiv.org/abs/2011.13824), and
* one Lagrange multiplier ``beta >= 0`` per split, which enforces the split's
  sign constraint ``s z >= 0`` (beta-CROWN, Wang et al. 2021,
  https://arxiv.org/abs/2103.06624): ``m(x) >= m(x) - beta s z(x)`` on the
  subdomain, so a lower bound of the right side bounds the margin there.

With the gm-likelihood detector the question is whether some point of the box
has ``z_t >= z_y`` and features inside target t's ball ``|f - mu_t|^2 / 2 <=
thr``: the bound is then of ``m + gamma (q(f) - thr)`` with ``gamma >= 0``, below
``m`` wherever the ball holds, and ``q`` replaced by a tangent plane (below it:
``q`` is convex) at a point that is optimised too -- one Lagrangian cut per
subdomain where the solver's outer approximation adds cuts to one program.

Every slope in [0, 1], every ``beta >= 0``, ``gamma >= 0`` and tangent point
gives a sound bound, so gradient steps can only choose among sound bounds; the
best one per subdomain is kept.
A subdomain is closed once its bound reaches ``PROOF_MARGIN``; the target is
proved when none is left. The input point minimising each subdomain's linear
bound is checked by a forward pass: a negative margin there (inside the ball,
with the detector) is a candidate
counterexample (re-checked in float32 by the caller). The search is not
complete by itself -- a subdomain with no unstable ReLU left whose bound is
still below 0, or the budget, ends it undecided -- and the caller then hands
the target to the mixed-integer solver for the rest of its time.

Intermediate bounds stay those of the root (CROWN, LP-tightened), each split
neuron's clamped at 0 on its side; the multipliers carry the splits' effect
(as in beta-CROWN). Measured on test 52's hardest target: re-bounding the
later layer per subdomain by CROWN took 75% of the time and lost by 3x.

Only chains of affine maps and ReLUs (MLPs and plain CNNs) are searched this
way; other graphs go to the solver directly (:func:`supports`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from robench.verify.bounds import Bounds, relu_relaxation
from robench.verify.network import DTYPE, Network, numel
from robench.verify.solvers import PROOF_MARGIN, SIGN_TOL

MAX_NEURONS = 4096  # ReLUs in all: beyond this, per-subdomain re-bounding costs more than it saves
BATCH = 1024  # subdomains split per round (each gives two children)
# Gradient steps on the slopes and multipliers: at the root, and per child (from its parent's).
# Measured on the GM MLP's hardest targets (mnist5k test 52 and 18, eps 0.05): 2, 3, 4, 8, 15
# steps per child took 5.8, 6.8, 8.6, 12.2, 20 s on test 52's target 2 (60k-41k subdomains);
# 3 was within 15% of the best on all three hard targets.
ROOT_STEPS, CHILD_STEPS = 60, 3
# The free parameters of a bound: Adam's learning rate and the interval each is kept in.
_FREE = {"alpha": (0.1, (0.0, 1.0)), "beta": (0.05, (0.0, None)),
         "gamma": (0.1, (0.0, None)), "tangent": (0.1, (None, None))}
MEMORY = 256 * 2 ** 20  # bytes of open subdomains kept at once: beyond this, undecided


@dataclass
class BabResult:
    """``status``: "positive" (proved), "negative" (``candidate`` has margin below 0 in
    float64), or "unknown" (budget or a subdomain it cannot split); ``bound`` is a proven
    lower bound of the margin (when positive) and ``domains`` the subdomains bounded."""

    status: str
    bound: float
    candidate: Optional[torch.Tensor]
    seconds: float
    domains: int


def supports(net: Network) -> bool:
    """A chain input -> (linear | relu)* whose ReLUs number at most ``MAX_NEURONS``."""
    for i, node in enumerate(net.nodes[1:], start=1):
        if node.kind not in ("linear", "relu") or node.inputs != (i - 1,):
            return False
    return 0 < sum(numel(net.nodes[r].shape) for r in net.relu_nodes()) <= MAX_NEURONS


class _Pool:
    """Open subdomains as stacked tensors: per ReLU node r, pre-activation bounds ``lo[r]``,
    ``hi[r]`` (N, n_r), split signs ``split[r]`` (+1 active, -1 inactive, 0 none), slopes
    ``alpha[r]`` and multipliers ``beta[r]``; and their bounds (N,)."""

    FIELDS = ("lo", "hi", "split", "alpha", "beta")

    def __init__(self, parts: Dict[str, Dict[int, torch.Tensor]], bound: torch.Tensor,
                 choice: torch.Tensor) -> None:
        self.parts, self.bound, self.choice = parts, bound, choice

    def __len__(self) -> int:
        return len(self.bound)

    def take(self, idx: torch.Tensor) -> "_Pool":
        return _Pool({f: {r: t[idx] for r, t in d.items()} for f, d in self.parts.items()}, self.bound[idx],
                     self.choice[idx])

    def extend(self, other: "_Pool") -> "_Pool":
        return _Pool({f: {r: torch.cat([t, other.parts[f][r]]) for r, t in d.items()}
                      for f, d in self.parts.items()}, torch.cat([self.bound, other.bound]),
                     torch.cat([self.choice, other.choice]))


class MarginBab:
    """Branch and bound for ``z_y - z_t`` of one point over its input box."""

    def __init__(self, net: Network, bounds: Bounds, y: int, threshold: Optional[float] = None) -> None:
        """``threshold``: the gm-likelihood threshold, for the detection-aware question (is
        there a point with ``z_t >= z_y`` and ``|f - mu_t|^2 / 2 <= threshold``?)."""
        if not supports(net):
            raise ValueError("branch and bound needs a chain of affine maps and ReLUs")
        if threshold is not None and net.mu is None:
            raise ValueError("a detector threshold needs a GM head")
        self.net, self.y, self.threshold = net, y, threshold
        if threshold is not None:  # the tangent points start at the middle of the features' box
            f_lo, f_hi = bounds.lower[net.features], bounds.upper[net.features]
            self.f_mid = ((f_lo + f_hi) / 2).reshape(-1).to(DTYPE)
        self.relus = net.relu_nodes()
        self.x_lo = bounds.lower[0].reshape(-1).to(DTYPE)
        self.x_hi = bounds.upper[0].reshape(-1).to(DTYPE)
        self.root = {r: (bounds.lower[r - 1].reshape(-1).to(DTYPE), bounds.upper[r - 1].reshape(-1).to(DTYPE))
                     for r in self.relus}
        per_domain = 8 * len(_Pool.FIELDS) * sum(len(lo) for lo, _ in self.root.values())
        self.max_domains = max(2 * BATCH, MEMORY // per_domain)
        self.biases = {i: n.op.bias_tensor().reshape(-1).to(DTYPE) for i, n in enumerate(net.nodes)
                       if n.kind == "linear"}

    # -- bounds ------------------------------------------------------------------------------
    def _backward(self, spec: torch.Tensor, lo, hi, free: Dict[str, Dict[int, torch.Tensor]], split,
                  record: Dict[int, torch.Tensor], ball=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Lower bounds of ``spec . output`` per domain (B,), and the input coefficients (B, n_in).

        Back-substitution through the chain: unstable ReLUs take the chord above and
        ``alpha`` below, split ones are exact on their side, and each split's ``beta s z``
        is subtracted at its pre-activation. With the detector's ``ball`` = (mu_t, thr), the
        bound is of ``m + gamma (q(f) - thr)`` (``q = |f - mu_t|^2 / 2``, below ``m`` where
        the ball holds) with ``q`` replaced by its tangent plane at ``mu_t + g`` (below ``q``:
        convex): ``gamma g . f - gamma (|g|^2 / 2 + g . mu_t + thr)``. ``record`` gets the
        coefficients on each ReLU's output (for branching)."""
        alpha, beta = free["alpha"], free["beta"]
        b = len(split[self.relus[0]])
        lam = spec.expand(b, -1)
        const = torch.zeros(b, dtype=DTYPE)
        for i in range(self.net.output, 0, -1):
            node = self.net.nodes[i]
            if ball is not None and i == self.net.features:
                (mu, thr), gamma, g = ball, free["gamma"][0], free["tangent"][0]
                lam = lam + gamma * g
                const = const - gamma[:, 0] * (0.5 * (g * g).sum(1) + g @ mu + thr)
            if node.kind == "linear":
                const = const + lam @ self.biases[i]
                lam = node.op.transpose(lam.reshape(b, *node.op.out_shape)).reshape(b, -1)
                continue
            l, u = lo[i], hi[i]
            record[i] = lam.detach()
            active, unstable = l >= 0, (l < 0) & (u > 0)
            width = torch.where(unstable, u - l, torch.ones_like(u))
            up_slope = torch.where(unstable, u / width, active.to(DTYPE))
            up_bias = torch.where(unstable, -up_slope * l, torch.zeros_like(u))
            low_slope = torch.where(unstable, alpha[i], active.to(DTYPE))
            pos, neg = lam.clamp_min(0), lam.clamp_max(0)
            const = const + (neg * up_bias).sum(-1)
            lam = pos * low_slope + neg * up_slope - beta[i] * split[i]
        const = const + lam.clamp_min(0) @ self.x_lo + lam.clamp_max(0) @ self.x_hi
        return const, lam

    def _optimise(self, pool: _Pool, spec: torch.Tensor, steps: int, ball=None):
        """Best bound per domain over ``steps`` gradient steps on the free parameters (slopes,
        multipliers; with the ball its multiplier and tangent point), in place; returns the
        ReLU coefficients and the input minimiser at the last step."""
        lo, hi, split = pool.parts["lo"], pool.parts["hi"], pool.parts["split"]
        names = [n for n in _FREE if n in pool.parts]
        free = {n: {r: t.clone().requires_grad_(True) for r, t in pool.parts[n].items()} for n in names}
        opt = torch.optim.Adam([{"params": list(free[n].values()), "lr": _FREE[n][0]} for n in names])
        best = torch.full((len(pool),), -math.inf, dtype=DTYPE)
        kept = {n: {r: t.detach().clone() for r, t in free[n].items()} for n in names}
        for step in range(steps + 1):
            record: Dict[int, torch.Tensor] = {}
            with torch.enable_grad():
                bound, lam = self._backward(spec, lo, hi, free, split, record, ball)
            better = bound.detach() > best
            best = torch.where(better, bound.detach(), best)
            for n in names:
                for r, t in free[n].items():
                    kept[n][r][better] = t.detach()[better]
            if step == steps or bool((best >= PROOF_MARGIN).all()):
                break
            opt.zero_grad()
            (-bound[best < PROOF_MARGIN].sum()).backward()
            opt.step()
            with torch.no_grad():
                for n in names:
                    low, high = _FREE[n][1]
                    if low is not None or high is not None:
                        for t in free[n].values():
                            t.clamp_(low, high)
        pool.parts.update(kept)
        pool.bound = best
        x_star = torch.where(lam > 0, self.x_lo, self.x_hi).detach()
        return record, x_star

    # -- the search --------------------------------------------------------------------------
    def run(self, t: int, time_limit: float, cancel=None) -> BabResult:
        """Search until proved, a candidate, ``time_limit`` seconds or ``cancel`` (a
        :class:`~robench.verify.solvers.Cancel`)."""
        t0 = time.perf_counter()
        k = self.net.nodes[self.net.output].shape[0]
        spec = torch.zeros(k, dtype=DTYPE)
        spec[self.y], spec[t] = 1.0, -1.0
        root = dict(self.root)
        ball = None
        if self.threshold is not None:
            ball = (self.net.mu[t].to(DTYPE), float(self.threshold))
            root = self._inside_ball(root, *ball)
            if root is None:  # no feature of the box reaches the ball
                return BabResult("positive", math.inf, None, time.perf_counter() - t0, 0)
        zeros = {r: torch.zeros((1, len(lo)), dtype=DTYPE) for r, (lo, _) in root.items()}
        parts = {"lo": {r: lo[None].clone() for r, (lo, _) in root.items()},
                 "hi": {r: hi[None].clone() for r, (_, hi) in root.items()},
                 "split": dict(zeros), "beta": {r: z.clone() for r, z in zeros.items()},
                 "alpha": {r: relu_relaxation(lo, hi)[0][None].clone() for r, (lo, hi) in root.items()}}
        if ball is not None:
            parts["gamma"] = {0: torch.zeros((1, 1), dtype=DTYPE)}
            parts["tangent"] = {0: (self.f_mid - ball[0])[None].clone()}
        fresh = _Pool(parts, torch.zeros(1, dtype=DTYPE), torch.zeros(1, dtype=torch.long))
        steps, domains = ROOT_STEPS, 0
        waiting: Optional[_Pool] = None
        closed_min = math.inf
        while True:
            x_star = self._bound(fresh, spec, steps, ball)
            domains += len(fresh)
            found = self._counterexample(x_star, spec, ball)
            if found is not None:
                return BabResult("negative", -math.inf, found, time.perf_counter() - t0, domains)
            done = fresh.bound >= PROOF_MARGIN
            if bool(done.any()):
                closed_min = min(closed_min, float(fresh.bound[done].min()))
            fresh = fresh.take((~done).nonzero().squeeze(1))
            if bool((fresh.choice < 0).any()):  # below the margin with no unstable ReLU left
                return BabResult("unknown", -math.inf, None, time.perf_counter() - t0, domains)
            waiting = fresh if waiting is None else waiting.extend(fresh)
            if len(waiting) == 0:
                return BabResult("positive", closed_min, None, time.perf_counter() - t0, domains)
            if len(waiting) > self.max_domains or time.perf_counter() - t0 > time_limit or (
                    cancel is not None and cancel.is_set()):
                return BabResult("unknown", -math.inf, None, time.perf_counter() - t0, domains)
            if _TRACE:
                print(f"bab {time.perf_counter() - t0:6.2f}s domains {domains} open {len(waiting)} "
                      f"min {float(waiting.bound.min()):.3f}", flush=True)
            order = torch.argsort(waiting.bound)
            parents, waiting = waiting.take(order[:BATCH]), waiting.take(order[BATCH:])
            fresh, steps = self._split(parents), CHILD_STEPS

    def _inside_ball(self, root, mu: torch.Tensor, thr: float):
        """The root's bounds where the features are ReLU outputs, cut to the ball's bounding box
        ``mu +- sqrt(2 thr)``: a point of the ball has ``z <= mu + r`` and, where ``mu - r > 0``,
        ``z >= mu - r`` (``f = relu(z)``). None when no point of the bounds lies in the box."""
        r = self.net.features
        if r not in root:
            return root
        radius = math.sqrt(2.0 * thr) if thr >= 0 else -1.0
        radius += 1e-9 * (1.0 + abs(radius))  # rounding must not cut into the ball
        if radius < 0:
            return None
        lo, hi = root[r]
        low = mu - radius
        lo = torch.where(low > 0, torch.maximum(lo, low), lo)
        hi = torch.minimum(hi, mu + radius)
        if bool((lo > hi).any()):
            return None
        return {**root, r: (lo, hi)}

    def _bound(self, pool: _Pool, spec: torch.Tensor, steps: int, ball=None) -> torch.Tensor:
        """Bound the pool's domains (in place: bounds, slopes, multipliers, branching choices);
        returns each domain's input minimiser."""
        record, x_star = self._optimise(pool, spec, steps, ball)
        pool.choice = self._branch(pool, record)
        return x_star

    def _branch(self, pool: _Pool, record: Dict[int, torch.Tensor]) -> torch.Tensor:
        """Per domain the ReLU to split, as a flat index over all ReLU layers (-1: none is
        unstable). BaBSR's score: what the chord's intercept costs the bound."""
        scores = []
        for r in self.relus:
            lo, hi = pool.parts["lo"][r], pool.parts["hi"][r]
            unstable = (lo < 0) & (hi > 0)
            width = torch.where(unstable, hi - lo, torch.ones_like(hi))
            intercept = torch.where(unstable, -lo * hi / width, torch.zeros_like(hi))
            lam = record[r]
            score = (-lam).clamp_min(0) * intercept + 1e-4 * lam.abs() * intercept
            scores.append(torch.where(unstable, score + 1e-12, torch.full_like(score, -1.0)))
        best, idx = torch.cat(scores, dim=1).max(dim=1)
        return torch.where(best < 0, torch.full_like(idx, -1), idx)

    def _split(self, parents: _Pool) -> _Pool:
        """Each parent's two children on its chosen ReLU (clamped at 0 on its side)."""
        n = len(parents)
        children = parents.extend(parents)
        at = torch.cat([parents.choice, parents.choice])
        sign = torch.cat([torch.ones(n, dtype=DTYPE), -torch.ones(n, dtype=DTYPE)])
        rows, offset = torch.arange(2 * n), 0
        for r in self.relus:
            width = children.parts["lo"][r].shape[1]
            mine = (at >= offset) & (at < offset + width)
            if bool(mine.any()):
                rr, jj, ss = rows[mine], at[mine] - offset, sign[mine]
                children.parts["split"][r][rr, jj] = ss
                lo, hi = children.parts["lo"][r], children.parts["hi"][r]
                lo[rr, jj] = torch.where(ss > 0, torch.zeros_like(ss), lo[rr, jj])
                hi[rr, jj] = torch.where(ss < 0, torch.zeros_like(ss), hi[rr, jj])
            offset += width
        return children

    def _counterexample(self, x_star: torch.Tensor, spec: torch.Tensor, ball=None) -> Optional[torch.Tensor]:
        """The input of lowest margin below 0 (inside the ball, with one), or None."""
        values = self.net.forward(x_star.reshape(-1, *self.net.input_shape))
        margins = values[self.net.output] @ spec
        if ball is not None:
            mu, thr = ball
            inside = 0.5 * ((values[self.net.features] - mu) ** 2).sum(1) <= thr
            margins = torch.where(inside, margins, torch.full_like(margins, math.inf))
        low = int(margins.argmin())
        if float(margins[low]) < -SIGN_TOL:
            return x_star[low].reshape(self.net.input_shape)
        return None


_TRACE = bool(os.environ.get("ROBENCH_BAB_TRACE"))  # a line per round on stdout (development)
