"""From a :class:`~robench.models.RobustModel` to the verifier's :class:`Network`.

The model's ``embed`` is traced with ``torch.fx`` (so any architecture written
with supported layers works, not only the built-in ones), each traced call is
translated to graph nodes, and consecutive affine maps are folded: the input
normalisation into the first dense layer, eval-mode BatchNorm into the
convolution before it, flattens into the dense layer after them. The
normalisation stays a separate per-channel map in front of a zero-padded
convolution: the padding is zero in normalised space, so folding it into the
weights would change the border pixels.

Max-pooling and PReLU are rewritten exactly with ReLUs
(``max(a, b) = b + relu(a - b)``, ``prelu(x) = a x + (1 - a) relu(x)``), so
bounds and the mixed-integer program see only affine maps, ReLUs and sums.
"""

from __future__ import annotations

import operator
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from robench.archs import GMHead
from robench.errors import UsageError
from robench.verify.fold import fold_affine
from robench.verify.network import DTYPE, Conv, Dense, Network, Node, Scale, Shape, Structural

SUPPORTED = ("Linear", "Conv2d (zero padding)", "ReLU", "PReLU", "BatchNorm (eval)", "Flatten/reshape",
             "AvgPool2d", "AdaptiveAvgPool2d", "MaxPool2d (no padding)", "residual add/sub",
             "zero padding", "slicing", "scalar multiply", "Dropout/Identity")
_PASS_MODULES = (nn.Identity, nn.Dropout)
_RELU_FNS = (F.relu, torch.relu)
_ADD_FNS = (operator.add, operator.iadd, torch.add)


def unsupported(what: str) -> UsageError:
    return UsageError(f"verify: unsupported layer {what}; supported: {', '.join(SUPPORTED)}, "
                      f"with a Linear or GM head")


class Ref(int):
    """A graph-node index standing for a traced tensor (a plain int is a constant)."""


class _Embed(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)


def extract_network(model: nn.Module) -> Network:
    """The verifier's graph of ``model`` (a RobustModel), normalisation and head included.

    Raises:
        UsageError: a layer the verifier cannot encode (naming it and what is supported).
    """
    shape = tuple(int(s) for s in model.info.input_shape)
    try:
        traced = torch.fx.symbolic_trace(_Embed(model.net))
    except Exception as exc:  # data-dependent control flow and the like
        raise UsageError(f"verify: cannot trace the architecture {model.info.arch} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:120]})") from None
    shapes = _shapes(traced, shape)
    builder = _Builder(dict(traced.named_modules()), shapes)
    first = builder.add(Node("input", (), shape, label="input"))
    mean = model.mean.detach().reshape(-1, 1, 1).to(DTYPE)
    std = model.std.detach().reshape(-1, 1, 1).to(DTYPE)
    norm = builder.linear(first, Scale(1.0 / std, -mean / std, shape), "normalize")
    feats = builder.translate(traced.graph, norm)
    builder.nodes[feats].label += " [features]"
    head_in = builder.nodes[feats].shape
    if len(head_in) != 1:
        raise UsageError(f"verify: features must be (N, D), got per-sample shape {head_in}")
    head = _head_op(model.net.classifier, head_in)
    builder.linear(feats, head, "head")
    nodes, features = fold_affine(builder.nodes, protect={feats})
    mu = model.net.classifier.mu.detach().to(DTYPE) if isinstance(model.net.classifier, GMHead) else None
    return Network(nodes, features, mu, description=model.info.arch)


def _head_op(head: nn.Module, shape: Shape) -> Dense:
    if isinstance(head, GMHead):
        # z_k = -|f|^2/2 + f.mu_k - |mu_k|^2/2; the first term is common to every class.
        mu = head.mu.detach().to(DTYPE)
        return Dense(mu, -0.5 * (mu * mu).sum(1), shape)
    if isinstance(head, nn.Linear):
        return Dense(head.weight, head.bias, shape)
    raise unsupported(f"{type(head).__name__} as the head")


def _shapes(traced: torch.fx.GraphModule, shape: Shape) -> Dict[str, Tuple[int, ...]]:
    """Per-sample output shape of every traced node (one dummy forward pass)."""
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(traced).propagate(torch.zeros((1, *shape)))
    out = {}
    for node in traced.graph.nodes:
        meta = node.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            out[node.name] = tuple(int(s) for s in meta.shape[1:])
    return out


class _Builder:
    """Translates fx nodes to graph nodes, one handler per layer kind."""

    def __init__(self, modules: Dict[str, nn.Module], shapes: Dict[str, Tuple[int, ...]]) -> None:
        self.modules, self.shapes = modules, shapes
        self.nodes: List[Node] = []

    def add(self, node: Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def linear(self, src: int, op, label: str) -> int:
        return self.add(Node("linear", (src,), op.out_shape, op=op, label=label))

    def relu(self, src: int, label: str = "relu") -> int:
        return self.add(Node("relu", (src,), self.nodes[src].shape, label=label))

    def combine(self, srcs: Sequence[int], coefs: Sequence[float], label: str) -> int:
        shapes = {self.nodes[s].shape for s in srcs}
        if len(shapes) != 1:
            raise unsupported(f"{label} of tensors with different shapes {sorted(shapes)} (broadcasting)")
        return self.add(Node("add", tuple(srcs), shapes.pop(), coefs=tuple(float(c) for c in coefs),
                             label=label))

    def shape(self, idx: int) -> Shape:
        return self.nodes[idx].shape

    # -- the fx walk -----------------------------------------------------------------
    def translate(self, graph: torch.fx.Graph, start: int) -> int:
        env: Dict[str, Any] = {}
        for fx_node in graph.nodes:
            if fx_node.op == "placeholder":
                env[fx_node.name] = Ref(start)
            elif fx_node.op == "output":
                result = env[fx_node.args[0].name]
                if not isinstance(result, Ref):
                    raise unsupported("returning a non-tensor from embed")
                return result
            elif fx_node.op == "get_attr":
                raise unsupported(f"parameter used as a value ({fx_node.target})")
            else:
                args = torch.fx.node.map_arg(fx_node.args, lambda n: env[n.name])
                kwargs = torch.fx.node.map_arg(fx_node.kwargs, lambda n: env[n.name])
                env[fx_node.name] = Ref(self.call(fx_node, args, kwargs))
        raise unsupported("an embed without output")

    def call(self, fx_node: torch.fx.Node, args: tuple, kwargs: dict) -> int:
        if fx_node.op == "call_module":
            return self.module(self.modules[fx_node.target], args, kwargs)
        if fx_node.op == "call_method":
            return self.method(fx_node.target, args, kwargs, fx_node.name)
        return self.function(fx_node.target, args, kwargs, fx_node.name)

    def module(self, mod: nn.Module, args: tuple, kwargs: dict) -> int:
        src = args[0]
        if isinstance(mod, _PASS_MODULES):
            return src
        if isinstance(mod, nn.ReLU):
            return self.relu(src)
        if isinstance(mod, nn.Linear):
            if len(self.shape(src)) != 1:
                raise unsupported(f"Linear applied to a {len(self.shape(src)) + 1}-D tensor (flatten first)")
            return self.linear(src, Dense(mod.weight, mod.bias, self.shape(src)), "linear")
        if isinstance(mod, nn.Conv2d):
            return self.conv(mod, src)
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return self.batchnorm(mod, src)
        if isinstance(mod, nn.PReLU):
            return self.prelu(src, mod.weight.detach().to(DTYPE))
        if isinstance(mod, nn.MaxPool2d):
            return self.maxpool(src, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode)
        if isinstance(mod, nn.AvgPool2d):
            kw = dict(kernel_size=mod.kernel_size, stride=mod.stride, padding=mod.padding,
                      ceil_mode=mod.ceil_mode, count_include_pad=mod.count_include_pad,
                      divisor_override=mod.divisor_override)
            return self.structural(src, lambda x: F.avg_pool2d(x, **kw), "avgpool")
        if isinstance(mod, nn.AdaptiveAvgPool2d):
            size = mod.output_size
            return self.structural(src, lambda x: F.adaptive_avg_pool2d(x, size), "adaptive-avgpool")
        if isinstance(mod, nn.Flatten):
            return self.flatten(src, mod.start_dim, mod.end_dim)
        raise unsupported(type(mod).__name__)

    def function(self, fn: Any, args: tuple, kwargs: dict, name: str) -> int:
        if fn in _RELU_FNS:
            return self.relu(args[0])
        if fn in _ADD_FNS or fn is operator.sub:
            return self.arith(fn, args, kwargs)
        if fn in (operator.mul, operator.truediv, torch.mul):
            return self.scalar(fn, args)
        if fn is F.pad:
            return self.pad(args, kwargs)
        if fn is operator.getitem:
            return self.getitem(args[0], args[1])
        if fn is torch.flatten:
            return self.flatten(args[0], *(list(args[1:]) or [kwargs.get("start_dim", 0)]))
        if fn is F.max_pool2d:
            kw = _pool_kwargs(args, kwargs, ("kernel_size", "stride", "padding", "dilation", "ceil_mode"))
            return self.maxpool(args[0], kw["kernel_size"], kw.get("stride") or kw["kernel_size"],
                                kw.get("padding", 0), kw.get("dilation", 1), kw.get("ceil_mode", False))
        if fn is F.adaptive_avg_pool2d:
            size = args[1] if len(args) > 1 else kwargs["output_size"]
            return self.structural(args[0], lambda x: F.adaptive_avg_pool2d(x, size), "adaptive-avgpool")
        if fn is F.avg_pool2d:
            rest = dict(kwargs)
            extra = args[1:]
            return self.structural(args[0], lambda x: F.avg_pool2d(x, *extra, **rest), "avgpool")
        raise unsupported(f"function {getattr(fn, '__name__', repr(fn))}")

    def method(self, name: str, args: tuple, kwargs: dict, fx_name: str) -> int:
        src = args[0]
        if name in ("contiguous",):
            return src
        if name == "relu":
            return self.relu(src)
        if name == "flatten":
            return self.flatten(src, *(list(args[1:]) or [kwargs.get("start_dim", 0)]))
        if name in ("view", "reshape"):
            target = self.shapes.get(fx_name)
            if target is None:
                raise unsupported(f"method {name} with an unknown shape")
            return self.structural(src, lambda x, t=target: x.reshape(x.shape[0], *t), name)
        raise unsupported(f"tensor method .{name}()")

    # -- layer handlers ------------------------------------------------------------------
    def structural(self, src: int, fn, label: str) -> int:
        return self.linear(src, Structural(fn, self.shape(src), label), label)

    def flatten(self, src: int, start_dim: int = 0, end_dim: int = -1) -> int:
        if start_dim not in (1, -len(self.shape(src)) - 1) or end_dim != -1:
            raise unsupported(f"flatten(start_dim={start_dim}, end_dim={end_dim}) (only the batch-keeping flatten)")
        return self.structural(src, lambda x: x.reshape(x.shape[0], -1), "flatten")

    def conv(self, mod: nn.Conv2d, src: int) -> int:
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise unsupported(f"Conv2d with padding {mod.padding!r} / padding_mode {mod.padding_mode!r}")
        op = Conv(mod.weight, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups, self.shape(src))
        return self.linear(src, op, "conv")

    def batchnorm(self, mod: nn.Module, src: int) -> int:
        if mod.running_mean is None or mod.running_var is None:
            raise unsupported(f"{type(mod).__name__} without running statistics")
        scale = (mod.weight if mod.affine else torch.ones_like(mod.running_var)).detach().to(DTYPE)
        scale = scale / torch.sqrt(mod.running_var.detach().to(DTYPE) + mod.eps)
        shift = (mod.bias.detach().to(DTYPE) if mod.affine else 0.0) - mod.running_mean.detach().to(DTYPE) * scale
        view = (-1,) + (1,) * (len(self.shape(src)) - 1)
        return self.linear(src, Scale(scale.view(view), shift.view(view), self.shape(src)), "batchnorm")

    def prelu(self, src: int, slope: torch.Tensor) -> int:
        view = (-1,) + (1,) * (len(self.shape(src)) - 1) if slope.numel() > 1 else (1,)
        a = slope.view(view)
        zero = torch.zeros_like(a)
        linear_part = self.linear(src, Scale(a, zero, self.shape(src)), "prelu-linear")
        relu = self.relu(src, "prelu-relu")
        relu_part = self.linear(relu, Scale(1.0 - a, zero, self.shape(src)), "prelu-relu-part")
        return self.combine([linear_part, relu_part], [1.0, 1.0], "prelu")

    def maxpool(self, src: int, kernel, stride, padding, dilation, ceil_mode) -> int:
        kh, kw = _pair(kernel)
        sh, sw = _pair(stride if stride is not None else kernel)
        if _pair(padding) != (0, 0) or _pair(dilation) != (1, 1) or ceil_mode:
            raise unsupported("MaxPool2d with padding, dilation or ceil_mode")
        _, h, w = self.shape(src)
        ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
        picks = []
        for i in range(kh):
            for j in range(kw):
                fn = (lambda x, i=i, j=j: x[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw])
                picks.append(self.structural(src, fn, f"maxpool-pick{i}{j}"))
        while len(picks) > 1:  # a balanced tree keeps the relaxations shallow
            nxt = [self._max2(a, b) for a, b in zip(picks[::2], picks[1::2])]
            picks = nxt + ([picks[-1]] if len(picks) % 2 else [])
        return picks[0]

    def _max2(self, a: int, b: int) -> int:
        diff = self.combine([a, b], [1.0, -1.0], "maxpool-diff")
        return self.combine([b, self.relu(diff, "maxpool-relu")], [1.0, 1.0], "maxpool-max")

    def arith(self, fn, args: tuple, kwargs: dict) -> int:
        a, b = args[0], args[1] if len(args) > 1 else kwargs.get("other")
        alpha = kwargs.get("alpha", 1)
        if not (isinstance(a, Ref) and isinstance(b, Ref)):
            raise unsupported("adding a constant to a tensor")
        sign = -1.0 if fn is operator.sub else 1.0
        return self.combine([a, b], [1.0, sign * float(alpha)], "add" if sign > 0 else "sub")

    def scalar(self, fn, args: tuple) -> int:
        tensor = [a for a in args if isinstance(a, Ref)]
        const = [a for a in args if isinstance(a, (int, float)) and not isinstance(a, (Ref, bool))]
        if len(tensor) != 1 or len(const) != 1 or (fn is operator.truediv and args[0] != tensor[0]):
            raise unsupported("multiplying two tensors (not affine)")
        c = float(const[0]) if fn is not operator.truediv else 1.0 / float(const[0])
        src = tensor[0]
        return self.linear(src, Scale(torch.tensor(c, dtype=DTYPE), torch.tensor(0.0, dtype=DTYPE),
                                      self.shape(src)), "scale")

    def pad(self, args: tuple, kwargs: dict) -> int:
        pads = args[1] if len(args) > 1 else kwargs["pad"]
        mode = args[2] if len(args) > 2 else kwargs.get("mode", "constant")
        value = args[3] if len(args) > 3 else kwargs.get("value", None)
        if mode != "constant" or value not in (None, 0, 0.0):
            raise unsupported(f"pad(mode={mode!r}, value={value!r}) (zero padding only)")
        pads = tuple(int(p) for p in pads)
        return self.structural(args[0], lambda x: F.pad(x, pads), "pad")

    def getitem(self, src: Any, index: Any) -> int:
        index = index if isinstance(index, tuple) else (index,)
        if not isinstance(src, Ref) or not all(isinstance(i, slice) or i is Ellipsis for i in index) or (
                index and index[0] != slice(None)):
            raise unsupported(f"indexing {index!r} (only slices that keep the batch dimension)")
        return self.structural(src, lambda x: x[index], "slice")


def _pair(v: Any) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pool_kwargs(args: tuple, kwargs: dict, names: Tuple[str, ...]) -> Dict[str, Any]:
    out = dict(zip(names, args[1:]))
    out.update({k: v for k, v in kwargs.items() if k in names})
    return out


def supported_reason(model: nn.Module) -> Optional[str]:
    """None when :func:`extract_network` accepts ``model``, else the one-line reason."""
    try:
        extract_network(model)
    except UsageError as exc:
        return str(exc)
    return None
