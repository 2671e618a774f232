"""The verifier's view of a network: a small graph of affine maps, ReLUs and sums.

Every supported layer becomes one of three node kinds:

* ``linear``: ``y = A x + b`` for an affine op (:class:`Dense`, :class:`Conv`,
  :class:`Scale` for per-channel affine maps, :class:`Structural` for the
  non-negative linear maps: average pooling, reshapes, slicing, zero padding);
* ``relu``: ``y = max(x, 0)`` element-wise;
* ``add``: ``y = sum_i c_i x_i`` (residual connections, max-pooling and PReLU
  rewritten with ReLUs).

Each op knows its forward map, its transpose (for back-substitution), its
interval image (for IBP) and its sparse matrix (for the mixed-integer program).
Tensors are float64: bounds are computed in double precision, the model runs
in float32, and the float32 re-check of every counterexample covers the gap.
Per-sample shapes exclude the batch dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

Shape = Tuple[int, ...]
DTYPE = torch.float64


def numel(shape: Shape) -> int:
    return int(np.prod(shape)) if shape else 1


class Op:
    """An affine map between per-sample shapes ``in_shape`` and ``out_shape``."""

    in_shape: Shape
    out_shape: Shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.bias_tensor().to(x.dtype)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """The linear part on a batch (N, *in_shape) -> (N, *out_shape)."""
        raise NotImplementedError

    def bias_tensor(self) -> torch.Tensor:
        return torch.zeros(self.out_shape, dtype=DTYPE)

    def transpose(self, lam: torch.Tensor) -> torch.Tensor:
        """(M, *out_shape) -> (M, *in_shape): each row times the linear part."""
        x0 = torch.zeros((lam.shape[0], *self.in_shape), dtype=lam.dtype, requires_grad=True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self.linear(x0), x0, lam)
        return grad

    def interval(self, lo: torch.Tensor, hi: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        center, radius = (hi + lo) / 2, (hi - lo) / 2
        mid = self(center)
        rad = self.abs_linear(radius)
        return mid - rad, mid + rad

    def abs_linear(self, r: torch.Tensor) -> torch.Tensor:
        """|A| r for a non-negative r (the radius of the interval image)."""
        raise NotImplementedError

    def matrix(self, chunk: int = 4096):
        """``(A, b)``: the linear part as a scipy CSR matrix (out x in) and the flat bias."""
        import scipy.sparse as sp

        n_in = numel(self.in_shape)
        blocks = []
        for start in range(0, n_in, chunk):
            eye = torch.eye(n_in, dtype=DTYPE)[start:start + chunk].reshape(-1, *self.in_shape)
            cols = self.linear(eye).reshape(eye.shape[0], -1).numpy()
            blocks.append(sp.csr_matrix(cols))
        a = sp.vstack(blocks).T.tocsr() if blocks else sp.csr_matrix((numel(self.out_shape), 0))
        return a, self.bias_tensor().reshape(-1).numpy()


class Dense(Op):
    """``W flat(x) + b`` (a Linear layer, the flatten before it implied)."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor], in_shape: Shape) -> None:
        self.weight = weight.detach().to(DTYPE)
        self.bias = (torch.zeros(self.weight.shape[0], dtype=DTYPE) if bias is None
                     else bias.detach().to(DTYPE))
        self.in_shape, self.out_shape = tuple(in_shape), (self.weight.shape[0],)

    def linear(self, x):
        return x.reshape(x.shape[0], -1) @ self.weight.t().to(x.dtype)

    def bias_tensor(self):
        return self.bias

    def transpose(self, lam):
        return (lam @ self.weight.to(lam.dtype)).reshape(lam.shape[0], *self.in_shape)

    def abs_linear(self, r):
        return r.reshape(r.shape[0], -1) @ self.weight.abs().t().to(r.dtype)

    def matrix(self, chunk: int = 4096):
        import scipy.sparse as sp

        return sp.csr_matrix(self.weight.numpy()), self.bias.numpy()


class Conv(Op):
    """A 2-D convolution (zero padding) with an optional bias."""

    def __init__(self, weight, bias, stride, padding, dilation, groups, in_shape: Shape) -> None:
        self.weight = weight.detach().to(DTYPE)
        self.bias = None if bias is None else bias.detach().to(DTYPE)
        self.kw = dict(stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation), groups=groups)
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(self.linear(torch.zeros((1, *in_shape), dtype=DTYPE)).shape[1:])

    def linear(self, x):
        return F.conv2d(x, self.weight.to(x.dtype), None, **self.kw)

    def bias_tensor(self):
        if self.bias is None:
            return torch.zeros(self.out_shape, dtype=DTYPE)
        return self.bias.view(-1, 1, 1).expand(self.out_shape)

    def transpose(self, lam):
        return torch.nn.grad.conv2d_input((lam.shape[0], *self.in_shape), self.weight.to(lam.dtype), lam,
                                          **self.kw)

    def abs_linear(self, r):
        return F.conv2d(r, self.weight.abs().to(r.dtype), None, **self.kw)


class Scale(Op):
    """``x * scale + shift`` with per-channel (broadcast) scale and shift."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor, shape: Shape) -> None:
        self.scale = scale.detach().to(DTYPE)
        self.shift = shift.detach().to(DTYPE)
        self.in_shape = self.out_shape = tuple(shape)

    def linear(self, x):
        return x * self.scale.to(x.dtype)

    def bias_tensor(self):
        return self.shift.expand(self.out_shape)

    def transpose(self, lam):
        return lam * self.scale.to(lam.dtype)

    def abs_linear(self, r):
        return r * self.scale.abs().to(r.dtype)


class Structural(Op):
    """A linear map with non-negative coefficients and no bias, given by a torch function.

    Average pooling, reshapes, slicing and zero padding: monotone, so the
    interval image is the image of the two ends.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], in_shape: Shape, label: str) -> None:
        self.fn, self.label = fn, label
        self.in_shape = tuple(in_shape)
        self.out_shape = tuple(fn(torch.zeros((1, *in_shape), dtype=DTYPE)).shape[1:])

    def linear(self, x):
        return self.fn(x)

    def interval(self, lo, hi):
        return self.fn(lo), self.fn(hi)

    def abs_linear(self, r):
        return self.fn(r)


@dataclass
class Node:
    """One node of the graph; ``inputs`` are indices of earlier nodes."""

    kind: str  # "input", "linear", "relu", "add"
    inputs: Tuple[int, ...]
    shape: Shape
    op: Optional[Op] = None
    coefs: Tuple[float, ...] = ()
    label: str = ""


@dataclass
class Network:
    """A topologically ordered graph; the last node is the head's output.

    ``output`` gives, for a GM head, the logits up to a term common to all
    classes (``f.mu_k - |mu_k|^2 / 2``): differences between classes, all the
    verifier needs, are exact. ``features`` is the index of the feature node;
    ``mu`` the GM class means (None for a linear head).
    """

    nodes: List[Node]
    features: int
    mu: Optional[torch.Tensor] = None
    description: str = ""
    consumers: Dict[int, List[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.consumers = {i: [] for i in range(len(self.nodes))}
        for i, node in enumerate(self.nodes):
            for j in node.inputs:
                self.consumers[j].append(i)

    @property
    def output(self) -> int:
        return len(self.nodes) - 1

    @property
    def input_shape(self) -> Shape:
        return self.nodes[0].shape

    def relu_nodes(self) -> List[int]:
        return [i for i, n in enumerate(self.nodes) if n.kind == "relu"]

    def forward(self, x: torch.Tensor, upto: Optional[int] = None) -> List[torch.Tensor]:
        """Every node's value on a batch (N, *input_shape) (up to node ``upto``)."""
        values: List[torch.Tensor] = []
        last = self.output if upto is None else upto
        for node in self.nodes[:last + 1]:
            values.append(apply_node(node, [values[j] for j in node.inputs], x))
        return values

    def margins(self, x: torch.Tensor, y: int) -> torch.Tensor:
        """(N, K) z_y - z_k (float64; the y column is 0)."""
        z = self.forward(x.to(DTYPE))[self.output]
        return z[:, y:y + 1] - z


def apply_node(node: Node, args: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    if node.kind == "input":
        return x
    if node.kind == "linear":
        return node.op(args[0])
    if node.kind == "relu":
        return args[0].clamp_min(0)
    return sum(c * a for c, a in zip(node.coefs, args))
