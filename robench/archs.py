"""Network architectures and the two heads (softmax and Gaussian-mixture).

Every architecture takes the same keyword arguments
(``num_classes``, ``feature_dim``, ``head``, ``in_channels``, ``input_size``),
exposes ``embed(x) -> (N, D)`` features and a head module named as in the
official GM-Loss code (``ip2`` for the MNIST net, ``linear`` for ResNet-20),
and its ``forward`` returns ``(features, logits)`` like the official code, so
official state dicts load without renaming. Inputs here are already
normalised; :class:`robench.models.RobustModel` does that.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from robench.errors import UsageError

HEADS = ("linear", "gm")


class GMHead(nn.Module):
    """Gaussian-mixture head: logits_k = -1/2 ||f - mu_k||^2 (identity covariance).

    Computed through the expanded square for speed and clamped at 0, since
    rounding can make ``|f|^2 - 2 f.mu + |mu|^2`` slightly negative.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.mu = nn.Parameter(torch.empty(out_features, in_features))
        # The official code passes calculate_gain('relu') as kaiming's slope `a`.
        nn.init.kaiming_normal_(self.mu, a=math.sqrt(2.0))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return -0.5 * squared_distances(f, self.mu)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def squared_distances(f: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """(N, D) x (K, D) -> (N, K) squared Euclidean distances, clamped at 0."""
    ff = (f * f).sum(dim=1, keepdim=True)
    mm = (mu * mu).sum(dim=1).unsqueeze(0)
    return (ff - 2.0 * f @ mu.t() + mm).clamp_min(0.0)


def make_head(kind: str, feature_dim: int, num_classes: int) -> nn.Module:
    if kind == "gm":
        return GMHead(feature_dim, num_classes)
    if kind == "linear":
        head = nn.Linear(feature_dim, num_classes)
        nn.init.kaiming_normal_(head.weight, a=math.sqrt(2.0))
        nn.init.zeros_(head.bias)
        return head
    raise UsageError(f"unknown head '{kind}' (known: {', '.join(HEADS)})")


class Arch(nn.Module):
    """Base: ``embed`` gives features, ``classifier`` the head, ``forward`` both."""

    head_name = "head"
    default_feature_dim = 64

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def classifier(self) -> nn.Module:
        return getattr(self, self.head_name)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        f = self.embed(x)
        return f, self.classifier(f)


class SmallCNN(Arch):
    """A compact CNN for 1x28x28 (MNIST), 1x8x8 (digits) or 3x32x32 inputs.

    conv32-conv32-pool-conv64-conv64-pool, adaptive pooling to at most 4x4,
    a 256-unit hidden layer, then a linear feature layer of ``feature_dim``
    (no activation, so GM features can sit anywhere) and the head.
    """

    head_name = "head"
    default_feature_dim = 32

    def __init__(self, num_classes: int = 10, feature_dim: int = 32, head: str = "linear",
                 in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        side = min(4, max(1, input_size // 4))
        self.pool = nn.AdaptiveAvgPool2d(side)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 256), nn.ReLU())
        self.feat = nn.Linear(256, feature_dim)
        self.head = make_head(head, feature_dim, num_classes)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 64, H/4, W/4) maps of the last conv stage (what spatial-attention defenses weight)."""
        return self.conv(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.feat(self.fc(self.pool(self.feature_maps(x))))


class GMMnistNet(Arch):
    """The 6-conv network of the official GM-Loss MNIST code (parameter names kept)."""

    head_name = "ip2"
    default_feature_dim = 2

    def __init__(self, num_classes: int = 10, feature_dim: int = 2, head: str = "gm",
                 in_channels: int = 1, input_size: int = 28) -> None:
        super().__init__()
        if in_channels != 1 or input_size != 28:
            raise UsageError(
                f"arch gm-mnist-net needs 1x28x28 inputs, got {in_channels}x{input_size}x{input_size}"
            )
        chans = [(1, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
        for i, (cin, cout) in enumerate(chans):
            stage, idx = i // 2 + 1, i % 2 + 1
            setattr(self, f"conv{stage}_{idx}", nn.Conv2d(cin, cout, kernel_size=5, padding=2))
            setattr(self, f"prelu{stage}_{idx}", nn.PReLU())
        self.ip1 = nn.Linear(128 * 3 * 3, feature_dim)
        self.ip2 = make_head(head, feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        for stage in (1, 2, 3):
            for idx in (1, 2):
                conv = getattr(self, f"conv{stage}_{idx}")
                x = getattr(self, f"prelu{stage}_{idx}")(conv(x))
            x = F.max_pool2d(x, 2)
        return self.ip1(x.flatten(1))


class _ShortcutA(nn.Module):
    """Option-A shortcut: stride-2 subsampling and zero-padded channels."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = _ShortcutA(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(Arch):
    """CIFAR ResNet-20 of the official GM-Loss CIFAR code (16/32/64, option-A shortcuts).

    The feature is the 64-D global average pool; ``feature_dim`` is fixed at 64.
    """

    head_name = "linear"
    default_feature_dim = 64

    def __init__(self, num_classes: int = 10, feature_dim: int = 64, head: str = "gm",
                 in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        if feature_dim != 64:
            raise UsageError(f"arch resnet20 has a 64-D feature, got feature_dim={feature_dim}")
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, 1)
        self.layer2 = self._stage(16, 32, 2)
        self.layer3 = self._stage(32, 64, 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
        self.linear = make_head(head, 64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(2)]
        return nn.Sequential(*blocks)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)


class MLP(Arch):
    """A fully connected ReLU network, small enough for exact verification.

    Inputs are flattened; ``hidden`` ReLU layers are followed by a ReLU feature
    layer of ``feature_dim`` units and the head (the default is the 784-64-32
    network of issue 12). The feature layer keeps its ReLU, unlike SmallCNN's,
    so every layer of the network is a ReLU layer the verifier must branch on.

    Args:
        num_classes: classes of the head.
        feature_dim: width of the last hidden layer (the features).
        head: ``linear`` or ``gm``.
        in_channels, input_size: the input's shape (C, S, S).
        hidden: widths of the hidden layers before the feature layer.
    """

    head_name = "head"
    default_feature_dim = 32

    def __init__(self, num_classes: int = 10, feature_dim: int = 32, head: str = "linear",
                 in_channels: int = 1, input_size: int = 28, hidden: Tuple[int, ...] = (64,)) -> None:
        super().__init__()
        widths = [in_channels * input_size * input_size, *hidden, feature_dim]
        if any(int(w) < 1 for w in widths):
            raise UsageError(f"arch mlp needs positive layer widths, got {widths}")
        layers: list = [nn.Flatten()]
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(int(w_in), int(w_out)), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = make_head(head, feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
