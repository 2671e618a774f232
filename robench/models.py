"""RobustModel: what ``robench.load_model`` returns and every attack and detector sees.

Inputs are in [0, 1]; the dataset's normalisation is applied inside, so an
attacker's eps is always measured in pixel space. ``forward`` gives logits,
``features`` the penultimate (N, D) representation the defenses shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from robench.archs import Arch, GMHead


@dataclass
class ModelInfo:
    """Metadata carried from the checkpoint (everything but the weights)."""

    arch: str
    arch_kwargs: Dict[str, Any]
    defense: str
    defense_params: Dict[str, Any]
    dataset: str
    num_classes: int
    feature_dim: int
    input_shape: Tuple[int, int, int]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    split: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    source: str = "robench"  # or "official-gm-loss"
    name: str = ""  # a short label for tables (the checkpoint's file stem)

    def as_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


class RobustModel(nn.Module):
    """A trained network with its normalisation folded in, in eval mode.

    Args:
        net: an architecture from :mod:`robench.archs`.
        info: its metadata (normalisation, classes, defense, ...).
    """

    channels_last = False  # set by robench.devices.prefer_channels_last

    def __init__(self, net: Arch, info: ModelInfo) -> None:
        super().__init__()
        self.net = net
        self.info = info
        c = len(info.mean)
        self.register_buffer("mean", torch.tensor(info.mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(info.std, dtype=torch.float32).view(1, c, 1, 1))

    @property
    def is_gm(self) -> bool:
        return isinstance(self.net.classifier, GMHead)

    @property
    def mu(self) -> torch.Tensor:
        """Class means (K, D) of a GM model."""
        if not self.is_gm:
            raise AttributeError("only GM models have class means 'mu'")
        return self.net.classifier.mu

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> (N, D) features."""
        return self.net.embed(self.normalize(x))

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(f)

    def features_and_logits(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Both in one pass (detector-aware objectives need both)."""
        f = self.features(x)
        return f, self.net.classifier(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [0, 1] -> (N, K) logits."""
        return self.net.classifier(self.features(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Predicted classes, computed in batches on the model's device."""
        out = [self(xb.to(self.device)).argmax(1).cpu() for xb in x.split(batch_size)]
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)

    def freeze(self) -> "RobustModel":
        """Eval mode, no parameter gradients (attacks only need input gradients)."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


def batched(fn, x: torch.Tensor, batch_size: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Apply ``fn`` to ``x`` in batches (moved to ``device``), concatenating on CPU."""
    outs: Sequence[torch.Tensor] = [fn(xb.to(device) if device is not None else xb).detach().cpu()
                                    for xb in x.split(batch_size)]
    return torch.cat(list(outs)) if outs else x.new_empty(0)
