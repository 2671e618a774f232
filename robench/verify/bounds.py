"""Certified bounds: interval bound propagation and CROWN, on the verifier's graph.

* IBP (Gowal et al. 2018, https://arxiv.org/abs/1810.12715): intervals pushed
  forward layer by layer; the margin's linear map is folded into the head so
  the last layer loses nothing.
* CROWN (Zhang et al. 2018, https://arxiv.org/abs/1811.00866): each bound is
  a linear function of the input obtained by back-substitution through the
  graph, every unstable ReLU replaced by linear lower and upper bounds (upper:
  the chord ``u (z - l) / (u - l)``; lower: ``z`` or ``0``, whichever is closer,
  CROWN's adaptive choice), then minimised over the input box in closed form.
  Intermediate (pre-ReLU) bounds come from CROWN too, for the neurons that
  interval arithmetic leaves unstable, in chunks that bound the memory.
* ``crown-ibp``: IBP intermediate bounds, CROWN for the margin; much cheaper on
  deep networks (ResNet-20), looser.

All bounds are over the Linf ball of radius eps intersected with [0, 1], in
float64; every bound is an intersection of sound bounds, so it is sound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from robench.verify.network import DTYPE, Dense, Network, Scale, apply_node, numel

METHODS = ("ibp", "crown-ibp", "crown")
MEMORY_BUDGET = 256 * 2 ** 20  # bytes of back-substitution coefficients held at once

Box = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class Bounds:
    """Per-node intervals (per-sample shapes) and the certified margin lower bounds.

    ``margin_lower[k]`` bounds ``z_y - z_k`` from below over the ball (``+inf`` at k = y).
    """

    lower: Dict[int, torch.Tensor]
    upper: Dict[int, torch.Tensor]
    margin_lower: torch.Tensor


def input_box(x0: torch.Tensor, eps: float) -> Box:
    """The Linf ball of radius ``eps`` around ``x0`` intersected with [0, 1]."""
    x0 = x0.to(DTYPE)
    return (x0 - eps).clamp(0.0, 1.0), (x0 + eps).clamp(0.0, 1.0)


def compute_bounds(net: Network, box: Box, y: int, method: str = "crown",
                   given: Optional[Dict[int, Box]] = None) -> Bounds:
    """Intervals of every node and margin lower bounds for label ``y``.

    Args:
        net: the graph.
        box: per-sample (lower, upper) input bounds.
        y: the true label.
        method: ``ibp``, ``crown-ibp`` or ``crown``.
        given: optional tighter intervals for some nodes (from LP tightening),
            intersected with the computed ones.
    """
    lower: Dict[int, torch.Tensor] = {}
    upper: Dict[int, torch.Tensor] = {}
    pre_relu = {n.inputs[0] for n in net.nodes if n.kind == "relu"}
    for i, node in enumerate(net.nodes):
        if node.kind == "input":
            lo, hi = box[0].to(DTYPE), box[1].to(DTYPE)
        else:
            lo, hi = _interval(node, [(lower[j], upper[j]) for j in node.inputs])
        if method == "crown" and i in pre_relu and not interval_is_exact(net, i):
            lo, hi = _crown_tighten(net, i, lo, hi, lower, upper)
        if given and i in given:
            lo, hi = torch.maximum(lo, given[i][0]), torch.minimum(hi, given[i][1])
        lower[i], upper[i] = lo, torch.maximum(hi, lo)  # rounding must not cross the ends
    spec = margin_spec(net, y)
    if method == "ibp":
        margins = _ibp_margins(net, spec, lower, upper)
    else:
        a, const = backward(net, net.output, spec, lower, upper)
        margins = concretize(a, const, lower[0], upper[0])
    margins[y] = float("inf")
    return Bounds(lower, upper, margins)


def margin_spec(net: Network, y: int) -> torch.Tensor:
    """(K, K) rows e_y - e_k: row k is the margin z_y - z_k (row y is zero)."""
    k = net.nodes[net.output].shape[0]
    spec = -torch.eye(k, dtype=DTYPE)
    spec[:, y] += 1.0
    return spec


def _interval(node, args) -> Box:
    if node.kind == "linear":
        lo, hi = node.op.interval(args[0][0].unsqueeze(0), args[0][1].unsqueeze(0))
        return lo[0], hi[0]
    if node.kind == "relu":
        return args[0][0].clamp_min(0), args[0][1].clamp_min(0)
    lo = sum(c * (a[0] if c >= 0 else a[1]) for c, a in zip(node.coefs, args))
    hi = sum(c * (a[1] if c >= 0 else a[0]) for c, a in zip(node.coefs, args))
    return lo, hi


def interval_is_exact(net: Network, i: int) -> bool:
    """An affine map of the input box (through per-channel maps only): IBP is already exact."""
    node = net.nodes[i]
    while node.kind == "linear":
        src = net.nodes[node.inputs[0]]
        if src.kind == "input":
            return True
        if not isinstance(src.op, Scale):
            return False
        node = src
    return False


def _crown_tighten(net: Network, i: int, lo: torch.Tensor, hi: torch.Tensor,
                   lower: Dict[int, torch.Tensor], upper: Dict[int, torch.Tensor]) -> Box:
    """CROWN bounds for the neurons of node ``i`` that the interval leaves unstable."""
    unstable = ((lo < 0) & (hi > 0)).reshape(-1).nonzero().squeeze(1)
    if len(unstable) == 0:
        return lo, hi
    shape = net.nodes[i].shape
    widest = max(numel(n.shape) for n in net.nodes[:i + 1])
    chunk = max(1, int(MEMORY_BUDGET // (8 * widest * 4)))
    lo, hi = lo.clone().reshape(-1), hi.clone().reshape(-1)
    for part in unstable.split(chunk):
        spec = torch.zeros((2 * len(part), numel(shape)), dtype=DTYPE)
        rows = torch.arange(len(part))
        spec[rows, part] = 1.0
        spec[rows + len(part), part] = -1.0  # lower bound of -z: the upper bound of z
        a, const = backward(net, i, spec.reshape(-1, *shape), lower, upper)
        bound = concretize(a, const, lower[0], upper[0])
        lo[part] = torch.maximum(lo[part], bound[:len(part)])
        hi[part] = torch.minimum(hi[part], -bound[len(part):])
    return lo.reshape(shape), hi.reshape(shape)


def relu_relaxation(lo: torch.Tensor, hi: torch.Tensor):
    """CROWN's linear bounds of relu on [lo, hi]: (lower slope, upper slope, upper intercept)."""
    active, inactive = lo >= 0, hi <= 0
    unstable = ~(active | inactive)
    width = torch.where(unstable, hi - lo, torch.ones_like(hi))
    up_slope = torch.where(active, torch.ones_like(hi), torch.where(unstable, hi / width, torch.zeros_like(hi)))
    up_bias = torch.where(unstable, -up_slope * lo, torch.zeros_like(hi))
    low_slope = torch.where(active, torch.ones_like(hi),
                            torch.where(unstable & (hi >= -lo), torch.ones_like(hi), torch.zeros_like(hi)))
    return low_slope, up_slope, up_bias


def backward(net: Network, start: int, spec: torch.Tensor, lower: Dict[int, torch.Tensor],
             upper: Dict[int, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Linear lower bounds ``spec . z_start >= a . x + const`` valid on the input box.

    Args:
        spec: (M, *shape of node start) coefficient rows.

    Returns:
        a: (M, *input_shape); const: (M,).
    """
    lams: Dict[int, torch.Tensor] = {start: spec.to(DTYPE)}
    const = torch.zeros(spec.shape[0], dtype=DTYPE)
    for i in range(start, -1, -1):
        lam = lams.pop(i, None)
        if lam is None:
            continue
        node = net.nodes[i]
        if node.kind == "input":
            return lam, const
        if node.kind == "linear":
            const = const + (lam * node.op.bias_tensor()).reshape(lam.shape[0], -1).sum(1)
            _accumulate(lams, node.inputs[0], node.op.transpose(lam))
        elif node.kind == "add":
            for j, c in zip(node.inputs, node.coefs):
                _accumulate(lams, j, c * lam)
        else:
            src = node.inputs[0]
            low_slope, up_slope, up_bias = relu_relaxation(lower[src], upper[src])
            pos, neg = lam.clamp_min(0), lam.clamp_max(0)
            const = const + (neg * up_bias).reshape(lam.shape[0], -1).sum(1)
            _accumulate(lams, src, pos * low_slope + neg * up_slope)
    raise ValueError("the graph has no input node before node {start}")


def _accumulate(lams: Dict[int, torch.Tensor], j: int, value: torch.Tensor) -> None:
    lams[j] = lams[j] + value if j in lams else value


def concretize(a: torch.Tensor, const: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """min over the box of ``a . x + const``, per row."""
    flat = a.reshape(a.shape[0], -1)
    return const + flat.clamp_min(0) @ lo.reshape(-1) + flat.clamp_max(0) @ hi.reshape(-1)


def _ibp_margins(net: Network, spec: torch.Tensor, lower, upper) -> torch.Tensor:
    """Interval margins with the spec folded into the head (no loss at the last layer)."""
    head = net.nodes[net.output]
    if head.kind == "linear" and isinstance(head.op, Dense):
        folded = Dense(spec @ head.op.weight, spec @ head.op.bias, head.op.in_shape)
        src = head.inputs[0]
        lo, _ = folded.interval(lower[src].unsqueeze(0), upper[src].unsqueeze(0))
        return lo[0]
    lo, hi = lower[net.output], upper[net.output]
    return torch.stack([(row.clamp_min(0) * lo + row.clamp_max(0) * hi).sum() for row in spec])


def check_soundness_point(net: Network, x: torch.Tensor, y: int, bounds: Bounds) -> bool:
    """Whether a concrete point's node values and margins lie inside ``bounds`` (a test helper)."""
    values = net.forward(x.to(DTYPE).unsqueeze(0))
    for i in bounds.lower:
        v = values[i][0]
        if (v < bounds.lower[i] - 1e-9).any() or (v > bounds.upper[i] + 1e-9).any():
            return False
    margins = net.margins(x.unsqueeze(0), y)[0]
    return bool((margins >= bounds.margin_lower - 1e-9).all())


__all__ = ["METHODS", "Bounds", "input_box", "compute_bounds", "backward", "concretize", "apply_node"]
