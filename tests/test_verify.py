"""robench.verify, the engine: the mlp arch, network extraction, IBP/CROWN soundness, bad inputs.

Tiny networks built here (random weights with randomised BatchNorm statistics,
or a few epochs on digits): extraction must reproduce every built-in
architecture exactly, and every certified bound must hold at every sampled
point of the ball.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from robench.archs import MLP, Arch, GMMnistNet, ResNet20, SmallCNN
from robench.errors import UsageError
from robench.models import ModelInfo, RobustModel
from robench.verify import extract_network, supported, verify_points
from robench.verify.bounds import compute_bounds, input_box

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(net: Arch, shape, mean=0.3, std=0.4) -> RobustModel:
    c = shape[0]
    info = ModelInfo(arch="test", arch_kwargs={}, defense="test", defense_params={}, dataset="test",
                     num_classes=net.classifier.out_features, feature_dim=net.classifier.in_features,
                     input_shape=tuple(shape), mean=(mean,) * c, std=(std,) * c)
    model = RobustModel(net, info)
    for m in model.modules():  # non-trivial statistics, so folding BatchNorm is really tested
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.freeze()


def test_mlp_arch_follows_the_conventions():
    net = MLP(num_classes=10, feature_dim=32, head="gm", in_channels=1, input_size=28)
    f, logits = net(torch.rand(5, 1, 28, 28))
    assert f.shape == (5, 32) and logits.shape == (5, 10) and (f >= 0).all()
    assert [m.out_features for m in net.body if isinstance(m, nn.Linear)] == [64, 32]
    assert net.classifier is net.head and MLP.default_feature_dim == 32
    with pytest.raises(UsageError, match="positive layer widths"):
        MLP(hidden=(0,))


def _train_mlp(defense: str, digits) -> RobustModel:
    from robench.training import TrainConfig, train

    return train(TrainConfig(defense=defense, dataset="digits", arch="mlp", epochs=12, seed=0, device="cpu"),
                 data=digits, quiet=True)


@pytest.fixture(scope="module")
def mlp_softmax(digits):
    return _train_mlp("softmax", digits)


def test_mlp_trains_with_both_heads(mlp_softmax, digits):
    for model, defense in ((mlp_softmax, "softmax"), (_train_mlp("gm", digits), "gm")):
        assert model.info.arch == "mlp" and model.is_gm == (defense == "gm")
        assert model.info.metrics["clean_test_acc"] > 0.85, defense


@pytest.mark.parametrize("arch, shape, head", [
    (MLP, (1, 8, 8), "linear"), (MLP, (1, 8, 8), "gm"), (SmallCNN, (1, 8, 8), "gm"),
    (SmallCNN, (3, 12, 12), "linear"), (ResNet20, (3, 8, 8), "gm"), (GMMnistNet, (1, 28, 28), "gm"),
])
def test_extraction_reproduces_every_builtin_arch(arch, shape, head):
    torch.manual_seed(0)
    net = arch(num_classes=10, feature_dim=arch.default_feature_dim, head=head, in_channels=shape[0],
               input_size=shape[1])
    model = make_model(net, shape)
    graph = extract_network(model)
    x = torch.rand(4, *shape, dtype=torch.float64)
    z = model.double()(x)
    values = graph.forward(x)
    # GM logits are reproduced up to the class-independent -|f|^2/2: compare differences.
    torch.testing.assert_close(z - z[:, :1], values[graph.output] - values[graph.output][:, :1],
                               rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.features(x), values[graph.features], rtol=1e-9, atol=1e-9)
    assert all(n.kind in ("input", "linear", "relu", "add") for n in graph.nodes)


def test_normalisation_and_flatten_fold_into_the_first_dense_layer():
    graph = extract_network(make_model(MLP(head="linear", in_channels=1, input_size=8), (1, 8, 8)))
    assert [n.kind for n in graph.nodes] == ["input", "linear", "relu", "linear", "relu", "linear"]
    assert graph.nodes[1].label == "normalize+flatten+linear"


class _TanhNet(Arch):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 8)
        self.head = nn.Linear(8, 3)

    def embed(self, x):
        return torch.tanh(self.fc(x.flatten(1)))


class _PaddedPoolNet(Arch):
    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, padding=1)
        self.head = nn.Linear(25, 3)

    def embed(self, x):
        return self.pool(x).flatten(1)


@pytest.mark.parametrize("net, what", [(_TanhNet(), "function tanh"),
                                       (_PaddedPoolNet(), "MaxPool2d with padding")])
def test_unsupported_layer_is_one_clear_line(net, what):
    model = make_model(net, (1, 8, 8))
    reason = supported(model)
    assert reason is not None and what in reason and "supported:" in reason and "\n" not in reason
    with pytest.raises(UsageError, match="unsupported layer"):
        verify_points(model, torch.rand(1, 1, 8, 8), torch.tensor([0]), 0.1, method="crown")


@pytest.mark.parametrize("arch, shape, head, eps, methods", [
    (MLP, (1, 8, 8), "linear", 0.05, ("ibp", "crown-ibp", "crown")),
    (MLP, (1, 8, 8), "gm", 0.05, ("ibp", "crown-ibp", "crown")),
    (SmallCNN, (1, 6, 6), "gm", 0.01, ("ibp", "crown-ibp", "crown")),
    (ResNet20, (3, 4, 4), "gm", 0.002, ("ibp", "crown-ibp", "crown")),
])
def test_certified_bounds_hold_at_every_sampled_point(arch, shape, head, eps, methods):
    torch.manual_seed(1)
    net = arch(num_classes=10, feature_dim=arch.default_feature_dim, head=head, in_channels=shape[0],
               input_size=shape[1])
    model = make_model(net, shape)
    graph = extract_network(model)
    x0 = torch.rand(*shape)
    y = int(model(x0[None]).argmax())
    lo, hi = input_box(x0, eps)
    gen = torch.Generator().manual_seed(0)
    inside = lo + (hi - lo) * torch.rand((300, *shape), generator=gen, dtype=torch.float64)
    corners = torch.where(torch.rand((100, *shape), generator=gen) > 0.5, hi, lo)
    samples = torch.cat([inside, corners])
    values = graph.forward(samples)
    margins = values[graph.output][:, y:y + 1] - values[graph.output]
    found = {}
    for method in methods:
        b = found[method] = compute_bounds(graph, (lo, hi), y, method)
        for i in b.lower:  # every node's interval contains every sampled value
            assert (values[i] >= b.lower[i] - 1e-9).all() and (values[i] <= b.upper[i] + 1e-9).all(), (method, i)
        lower = b.margin_lower.clone()
        lower[y] = 0.0
        assert (margins >= lower - 1e-9).all(), method
    crown, ibp = found["crown"].margin_lower, found["ibp"].margin_lower
    others = [k for k in range(10) if k != y]
    assert float(crown[others].sum()) > float(ibp[others].sum())  # CROWN is the tighter on these nets


def test_crown_certifies_a_confident_point_and_reports_margins(mlp_softmax, digits):
    model = mlp_softmax
    x, y = digits.split("test", 20)
    res = verify_points(model, x, y, 0.002, method="crown")
    assert {r.status for r in res} <= {"robust", "unknown"} and sum(r.robust for r in res) >= 10
    for r in res:
        assert r.margin_lower <= r.margin_upper and (r.margin_lower > 0) == r.robust
        assert r.counterexample is None and r.solver is None
    zero = verify_points(model, x[:3], y[:3], 0.0, method="ibp")
    assert all(r.status in ("robust", "not-robust") for r in zero)  # eps 0: the clean prediction decides


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": -0.1}, "verify: eps must be a number in [0, 1], got -0.1"),
    ({"eps": 1.5}, "verify: eps must be a number in [0, 1], got 1.5"),
    ({"eps": math.nan}, "verify: eps must be a number in [0, 1], got nan"),
    ({"eps": 0.1, "method": "milp"}, "verify: unknown method 'milp'"),
    ({"eps": 0.1, "norm": "l2"}, "verify: unknown norm 'l2'"),
    ({"eps": 0.1, "time_limit": 0}, "verify: time_limit must be a number in (0, inf), got 0"),
    ({"eps": 0.1, "threshold": 1.0}, "needs a Gaussian-mixture (GM) model"),
    ({"eps": 0.1, "solver": "gurobi"}, "verify: unknown solver 'gurobi'"),
])
def test_bad_arguments_are_one_line(kwargs, message):
    model = make_model(MLP(head="linear", in_channels=1, input_size=8), (1, 8, 8))
    with pytest.raises(UsageError) as info:
        verify_points(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]), **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_points_are_one_line():
    model = make_model(MLP(head="linear", in_channels=1, input_size=8), (1, 8, 8))
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(UsageError, match="shape"):
        verify_points(model, torch.rand(2, 1, 9, 9), torch.tensor([0, 1]), 0.1)
    with pytest.raises(UsageError, match=r"\[0, 1\]"):
        verify_points(model, x + 2, torch.tensor([0, 1]), 0.1)
    with pytest.raises(UsageError, match="labels"):
        verify_points(model, x, torch.tensor([0, 12]), 0.1)
    with pytest.raises(UsageError, match="x_start"):
        verify_points(model, x, torch.tensor([0, 1]), 0.1, x_start=x[:1])
