"""Folding consecutive affine maps into one (fewer nodes, and exact: no bound is lost).

Normalisation into the first dense layer, BatchNorm into the convolution or
dense layer before it, flattens into the dense layer after them, and two dense
layers into one when the product is no larger than the pair.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

import torch

from robench.verify.network import Conv, Dense, Node, Op, Scale, Structural, numel

_RESHAPES = ("flatten", "view", "reshape")


def fold_affine(nodes: List[Node], protect: Set[int]) -> Tuple[List[Node], int]:
    """Fold until nothing folds; returns the new nodes and the new index of ``protect``'s one node.

    Nodes in ``protect`` (the features) are never folded into their consumer.
    """
    nodes = list(nodes)
    (marked,) = tuple(protect)
    while True:
        consumers: Dict[int, List[int]] = {i: [] for i in range(len(nodes))}
        for i, node in enumerate(nodes):
            for j in node.inputs:
                consumers[j].append(i)
        pair = _find_pair(nodes, consumers, marked)
        if pair is None:
            return nodes, marked
        first, second, op = pair
        nodes[second] = Node("linear", nodes[first].inputs, op.out_shape, op=op,
                             label=f"{nodes[first].label}+{nodes[second].label}")
        nodes, marked = _drop(nodes, first, marked)


def _find_pair(nodes: List[Node], consumers: Dict[int, List[int]], marked: int):
    for i, node in enumerate(nodes):
        if node.kind != "linear" or i == marked or len(consumers[i]) != 1:
            continue
        nxt = consumers[i][0]
        if nodes[nxt].kind != "linear":
            continue
        op = compose(node.op, nodes[nxt].op)
        if op is not None:
            return i, nxt, op
    return None


def _drop(nodes: List[Node], dead: int, marked: int) -> Tuple[List[Node], int]:
    remap = {old: new for new, old in enumerate(i for i in range(len(nodes)) if i != dead)}
    out = []
    for i, node in enumerate(nodes):
        if i != dead:
            out.append(Node(node.kind, tuple(remap[j] for j in node.inputs), node.shape, node.op,
                            node.coefs, node.label))
    return out, remap[marked]


def compose(first: Op, second: Op) -> Optional[Op]:
    """One op equal to ``second(first(x))``, or None when the pair is kept as two."""
    if isinstance(second, Dense):
        if isinstance(first, Structural) and first.label in _RESHAPES:
            return Dense(second.weight, second.bias, first.in_shape)
        if isinstance(first, Scale):
            scale = first.scale.expand(first.in_shape).reshape(-1)
            shift = first.shift.expand(first.in_shape).reshape(-1)
            return Dense(second.weight * scale, second.bias + second.weight @ shift, first.in_shape)
        if isinstance(first, Dense):
            out, mid = second.weight.shape
            if out * numel(first.in_shape) <= out * mid + first.weight.numel():
                return Dense(second.weight @ first.weight, second.weight @ first.bias + second.bias,
                             first.in_shape)
        return None
    if isinstance(second, Scale):
        if isinstance(first, Scale):
            return Scale(first.scale * second.scale, first.shift * second.scale + second.shift, first.in_shape)
        per_out = _per_leading(second, first.out_shape)
        if per_out is None:
            return None
        s, t = per_out
        if isinstance(first, Dense):
            return Dense(first.weight * s[:, None], first.bias * s + t, first.in_shape)
        if isinstance(first, Conv):
            bias = torch.zeros(first.weight.shape[0], dtype=s.dtype) if first.bias is None else first.bias
            kw = first.kw
            return Conv(first.weight * s.view(-1, 1, 1, 1), bias * s + t, kw["stride"], kw["padding"],
                        kw["dilation"], kw["groups"], first.in_shape)
    return None


def _per_leading(op: Scale, shape) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The scale and shift as vectors over the leading (channel) axis, if they are that."""
    c = shape[0]
    try:
        s = op.scale.expand(shape)
        t = op.shift.expand(shape)
    except RuntimeError:
        return None
    flat_s, flat_t = s.reshape(c, -1), t.reshape(c, -1)
    if not (torch.equal(flat_s, flat_s[:, :1].expand_as(flat_s)) and torch.equal(flat_t, flat_t[:, :1].expand_as(flat_t))):
        return None
    return flat_s[:, 0].clone(), flat_t[:, 0].clone()
