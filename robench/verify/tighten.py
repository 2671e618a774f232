"""Tightening pre-activation bounds by linear programming over the triangle relaxation.

For each ReLU layer in turn, every neuron that CROWN leaves unstable gets the
exact minimum and maximum of its pre-activation over the LP relaxation of the
layers before it (HiGHS, warm-started from one neuron to the next), then CROWN
is re-run so later layers profit. Fewer unstable neurons mean fewer binaries
and a tighter relaxation in the mixed-integer program. It pays where the
program is small enough for dozens of LPs to cost less than the branching they
save (measured on the 784-64-32 MLP: see benchmarks/verify_mnist5k.md).
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from robench.verify.bounds import Bounds, Box, interval_is_exact, compute_bounds
from robench.verify.milp import build_program
from robench.verify.network import DTYPE, Network
from robench.verify.solvers import highs_model

LP_PAD = 1e-6  # LP optima carry the solver's tolerances: widen each new bound by this (and relatively)


def tighten_bounds(net: Network, bounds: Bounds, box: Box, y: int) -> Bounds:
    """Bounds with every unstable pre-activation sharpened by LP (sound: intersected, padded)."""
    given: Dict[int, Box] = {}
    for r in net.relu_nodes():
        pre = net.nodes[r].inputs[0]
        if interval_is_exact(net, pre):
            continue
        lo, hi = bounds.lower[pre].reshape(-1).clone(), bounds.upper[pre].reshape(-1).clone()
        unstable = np.flatnonzero(((lo < 0) & (hi > 0)).numpy())
        if len(unstable) == 0:
            continue
        _solve_layer(net, bounds, pre, unstable, lo, hi)
        shape = net.nodes[pre].shape
        given[pre] = (lo.reshape(shape), hi.reshape(shape))
        bounds = compute_bounds(net, box, y, "crown", given)
    return bounds


def _solve_layer(net: Network, bounds: Bounds, pre: int, unstable: np.ndarray,
                 lo: torch.Tensor, hi: torch.Tensor) -> None:
    prog = build_program(net, bounds, upto=pre, relax=True)
    m, c = prog.exprs[pre]
    h = highs_model(prog, np.zeros(prog.n_vars), relax=True)
    cols = np.arange(prog.n_vars, dtype=np.int32)
    for j in unstable:
        row = np.asarray(m.getrow(int(j)).todense()).ravel()
        for sign in (1.0, -1.0):
            h.changeColsCost(prog.n_vars, cols, sign * row)
            h.run()
            if h.modelStatusToString(h.getModelStatus()) != "Optimal":
                continue  # keep the CROWN bound
            value = sign * h.getInfo().objective_function_value + float(c[j])
            pad = LP_PAD * (1.0 + abs(value))
            if sign > 0:
                lo[j] = max(float(lo[j]), value - pad)
            else:
                hi[j] = min(float(hi[j]), value + pad)
    hi.copy_(torch.maximum(hi, lo).to(DTYPE))


def lp_margin_bounds(net: Network, bounds: Bounds, y: int, targets) -> Dict[int, float]:
    """Lower bounds of ``z_y - z_t`` over the LP relaxation of the whole network, per target.

    Tighter than CROWN's (the triangle relaxation is the best convex one per
    neuron), and one warm-started LP per target costs far less than the
    mixed-integer root it can spare.
    """
    prog = build_program(net, bounds, relax=True)
    h = highs_model(prog, np.zeros(prog.n_vars), relax=True)
    cols = np.arange(prog.n_vars, dtype=np.int32)
    out: Dict[int, float] = {}
    k = net.nodes[net.output].shape[0]
    for t in targets:
        coef = np.zeros(k)
        coef[y], coef[t] = 1.0, -1.0
        cost, const = prog.objective(net.output, coef)
        h.changeColsCost(prog.n_vars, cols, cost)
        h.run()
        if h.modelStatusToString(h.getModelStatus()) == "Optimal":
            value = h.getInfo().objective_function_value + const
            out[t] = value - LP_PAD * (1.0 + abs(value))
    return out
