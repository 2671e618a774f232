"""The mixed-integer program of Tjeng, Xiao, Tedrake (ICLR 2019, https://arxiv.org/abs/1711.07356).

Variables: the input pixels (bounded by the Linf ball intersected with [0, 1])
and, for every *unstable* ReLU (its pre-activation bounds straddle 0), its
output ``a`` and an indicator ``d``; with bounds ``l < 0 < u`` on the
pre-activation ``z``::

    a >= z,   a <= z - l (1 - d),   a <= u d,   0 <= a <= u,   d in {0, 1}

A ReLU with ``u <= 0`` is the constant 0 and one with ``l >= 0`` is ``z``
itself: neither gets a binary, so the tighter the bounds, the fewer the
binaries. Each live pre-activation ``z`` is a variable bounded by its proven
interval (one equality row); every other node is an affine expression (sparse
matrix) of the variables. With ``d`` relaxed to [0, 1] the same rows are the triangle
relaxation, which :func:`tighten_bounds` uses to sharpen the bounds layer by
layer by linear programming (HiGHS).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import scipy.sparse as sp
import torch

from robench.verify.bounds import Bounds
from robench.verify.network import DTYPE, Network, numel

Expr = Tuple[sp.csr_matrix, np.ndarray]


@dataclass
class Program:
    """A mixed-integer (or, relaxed, linear) program over ``n`` variables.

    ``rows`` holds ``row_lo <= A v <= row_hi``; ``exprs`` the affine
    expression of every node built; ``relus`` per ReLU node the unstable
    neurons' (flat index, a column, d column).
    """

    lb: np.ndarray
    ub: np.ndarray
    integer: np.ndarray
    rows: sp.csr_matrix
    row_lo: np.ndarray
    row_hi: np.ndarray
    exprs: Dict[int, Expr]
    relus: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    pres: Dict[int, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def n_vars(self) -> int:
        return len(self.lb)

    @property
    def n_binaries(self) -> int:
        return int(self.integer.sum())

    def objective(self, node: int, coef: np.ndarray) -> Tuple[np.ndarray, float]:
        """The linear objective ``coef . value(node)`` as (cost vector, constant)."""
        m, c = self.exprs[node]
        return np.asarray(m.T @ coef).ravel(), float(coef @ c)

    def values(self, net: Network, x: torch.Tensor) -> np.ndarray:
        """Every variable's value at the input ``x`` (a feasible point: a warm start)."""
        vals = np.zeros(self.n_vars)
        node_values = net.forward(x.to(DTYPE).reshape(1, *net.input_shape))
        vals[: numel(net.input_shape)] = node_values[0].reshape(-1).numpy()
        for node, (live, z_col) in self.pres.items():
            vals[z_col] = node_values[net.nodes[node].inputs[0]].reshape(-1).numpy()[live]
        for node, (flat, a_col, d_col) in self.relus.items():
            pre = node_values[net.nodes[node].inputs[0]].reshape(-1).numpy()[flat]
            vals[a_col] = np.maximum(pre, 0.0)
            vals[d_col] = (pre > 0).astype(float)
        return np.clip(vals, self.lb, self.ub)


def build_program(net: Network, bounds: Bounds, upto: Optional[int] = None, relax: bool = False) -> Program:
    """The program of ``net`` (nodes ``0..upto``) with ReLU bounds from ``bounds``."""
    last = net.output if upto is None else upto
    pre_bounds = {}
    n_cols = numel(net.input_shape)
    for i in range(last + 1):
        if net.nodes[i].kind == "relu":
            src = net.nodes[i].inputs[0]
            lo, hi = bounds.lower[src].reshape(-1).numpy(), bounds.upper[src].reshape(-1).numpy()
            pre_bounds[i] = (lo, hi)
            n_cols += int((hi > 0).sum()) + 2 * int(((lo < 0) & (hi > 0)).sum())
    builder = _Builder(n_cols, relax)
    box = (bounds.lower[0].reshape(-1).numpy(), bounds.upper[0].reshape(-1).numpy())
    exprs: Dict[int, Expr] = {0: builder.inputs(*box)}
    for i in range(1, last + 1):
        node = net.nodes[i]
        if node.kind == "linear":
            a, b = _matrix(node.op)
            m, c = exprs[node.inputs[0]]
            exprs[i] = ((a @ m).tocsr(), a @ c + b)
        elif node.kind == "add":
            parts = [exprs[j] for j in node.inputs]
            exprs[i] = (sum(k * p[0] for k, p in zip(node.coefs, parts)).tocsr(),
                        sum(k * p[1] for k, p in zip(node.coefs, parts)))
        else:
            exprs[i] = builder.relu(i, exprs[node.inputs[0]], *pre_bounds[i])
    return builder.finish(exprs)


def _matrix(op) -> Tuple[sp.csr_matrix, np.ndarray]:
    cached = getattr(op, "_sparse", None)
    if cached is None:
        cached = op.matrix()
        op._sparse = cached  # ops are immutable; the matrix is the same for every point
    return cached


class _Builder:
    def __init__(self, n_cols: int, relax: bool) -> None:
        self.n, self.relax, self.next = n_cols, relax, 0
        self.lb, self.ub = np.zeros(n_cols), np.zeros(n_cols)
        self.integer = np.zeros(n_cols, dtype=bool)
        self.blocks: List[sp.csr_matrix] = []
        self.lo: List[np.ndarray] = []
        self.hi: List[np.ndarray] = []
        self.relus: Dict[int, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.pres: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def columns(self, k: int) -> np.ndarray:
        cols = np.arange(self.next, self.next + k)
        self.next += k
        return cols

    def inputs(self, lo: np.ndarray, hi: np.ndarray) -> Expr:
        cols = self.columns(len(lo))
        self.lb[cols], self.ub[cols] = lo, hi
        return sp.csr_matrix((np.ones(len(lo)), (np.arange(len(lo)), cols)), shape=(len(lo), self.n)), np.zeros(len(lo))

    def relu(self, node: int, pre: Expr, lo: np.ndarray, hi: np.ndarray) -> Expr:
        live = np.flatnonzero(hi > 0)
        z_col = self.columns(len(live))
        z = self._pre_variables(pre, live, z_col, lo[live], hi[live])
        self.pres[node] = (live, z_col)
        unstable = lo[live] < 0
        flat, zu = live[unstable], z_col[unstable]
        k = len(flat)
        a_col, d_col = self.columns(k), self.columns(k)
        self.lb[a_col], self.ub[a_col] = 0.0, hi[flat]
        self.lb[d_col], self.ub[d_col] = 0.0, 1.0
        self.integer[d_col] = not self.relax
        self.relus[node] = (flat, a_col, d_col)
        l, u = lo[flat], hi[flat]
        self._pairs([a_col, zu], [1.0, -1.0], 0.0, np.inf)                     # a >= z
        self._pairs([a_col, zu, d_col], [1.0, -1.0, -l], -np.inf, -l)          # a <= z - l (1 - d)
        self._pairs([a_col, d_col], [1.0, -u], -np.inf, 0.0)                   # a <= u d
        # The output: a for unstable neurons, z for active ones, 0 for dead ones.
        cols = z.copy()
        cols[unstable] = a_col
        out = sp.csr_matrix((np.ones(len(live)), (live, cols)), shape=(len(lo), self.n))
        return out, np.zeros(len(lo))

    def _pre_variables(self, pre: Expr, live: np.ndarray, cols: np.ndarray, lo: np.ndarray,
                       hi: np.ndarray) -> np.ndarray:
        """Columns z = pre[live], bounded by the proven interval: the ReLU rows stay sparse
        (the pre-activation's long row appears once, not twice) and the bounds tighten the LP."""
        m, c = pre
        k = len(live)
        self.lb[cols], self.ub[cols] = lo, hi
        e_z = sp.csr_matrix((np.ones(k), (np.arange(k), cols)), shape=(k, self.n))
        self._rows(e_z - m[live], c[live], c[live])
        return cols

    def _pairs(self, cols, coefs, lo, hi) -> None:
        """Rows ``lo <= sum_j coefs[j] * v[cols[j][r]] <= hi`` for r = 0..k-1 (coefs scalar or per row)."""
        k = len(cols[0])
        if k == 0:
            return
        rows = np.tile(np.arange(k), len(cols))
        data = np.concatenate([np.broadcast_to(np.asarray(c, dtype=float), (k,)) for c in coefs])
        block = sp.csr_matrix((data, (rows, np.concatenate(cols))), shape=(k, self.n))
        self._rows(block, np.broadcast_to(np.asarray(lo, dtype=float), (k,)).copy(),
                   np.broadcast_to(np.asarray(hi, dtype=float), (k,)).copy())

    def _rows(self, block: sp.spmatrix, lo: np.ndarray, hi: np.ndarray) -> None:
        self.blocks.append(sp.csr_matrix(block))
        self.lo.append(lo)
        self.hi.append(hi)

    def finish(self, exprs: Dict[int, Expr]) -> Program:
        rows = sp.vstack(self.blocks).tocsr() if self.blocks else sp.csr_matrix((0, self.n))
        lo = np.concatenate(self.lo) if self.lo else np.zeros(0)
        hi = np.concatenate(self.hi) if self.hi else np.zeros(0)
        return Program(self.lb, self.ub, self.integer, rows, lo, hi, exprs, self.relus, self.pres)
