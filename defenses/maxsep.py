"""``maxsep``: maximal separation of attended discriminative features around class prototypes."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, ClassVar, Dict, Iterator, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from robench.defenses.adversarial import PresetDefense
from robench.params import Range
from robench.errors import UsageError


class AttendedPrototypes(nn.Module):
    """Latent patches, a spatial attention map and ``per_class`` prototypes per class.

    ``distances(maps)`` gives, for every class k, the attention-weighted mean
    over locations of the squared distance (averaged over latent dimensions,
    so 0 to 1) from each latent patch to class k's nearest prototype.
    """

    def __init__(self, channels: int, num_classes: int, latent_dim: int, per_class: int) -> None:
        super().__init__()
        # ProtoPNet's add-on layers: a sigmoid keeps the latent in [0, 1]^L, so the margin has a fixed scale.
        self.latent = nn.Sequential(nn.Conv2d(channels, latent_dim, 1), nn.ReLU(),
                                    nn.Conv2d(latent_dim, latent_dim, 1), nn.Sigmoid())
        self.attention = nn.Conv2d(channels, 1, 1)
        self.prototypes = nn.Parameter(torch.rand(num_classes, per_class, latent_dim))

    def attention_map(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, H*W) weights summing to 1 over locations."""
        return self.attention(maps).flatten(1).softmax(dim=1)

    def distances(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) feature maps -> (N, K) attended distances to each class's prototypes."""
        z = self.latent(maps).flatten(2).transpose(1, 2)  # (N, HW, L)
        k, m, dim = self.prototypes.shape
        protos = self.prototypes.reshape(k * m, dim)
        d = (z.pow(2).sum(-1, keepdim=True) - 2 * z @ protos.t() + protos.pow(2).sum(-1)) / dim
        nearest = d.clamp_min(0).view(*d.shape[:2], k, m).amin(-1)  # (N, HW, K)
        return (self.attention_map(maps).unsqueeze(-1) * nearest).sum(1)


@contextmanager
def recorded_feature_maps(net: nn.Module) -> Iterator[List[torch.Tensor]]:
    """Record what ``net.feature_maps`` returns while the model runs, so maps and logits take one pass.

    Relies on the arch's ``embed`` calling ``self.feature_maps`` (small-cnn does).
    """
    maps: List[torch.Tensor] = []
    original = net.feature_maps

    def recording(x: torch.Tensor) -> torch.Tensor:
        maps.append(original(x))
        return maps[-1]

    net.feature_maps = recording  # an instance attribute shadows the method until deleted
    try:
        yield maps
    finally:
        del net.feature_maps


class MaximalSeparation(PresetDefense):
    """Maximal separation of discriminative features (attention + class prototypes), on a linear head.

    Paper: Nakka, Salzmann, "Towards Robust Fine-grained Recognition by
    Maximal Separation of Discriminative Features", ACCV 2020,
    https://arxiv.org/abs/2006.06028.

    Beside the classifier, robench trains ProtoPNet-style add-on layers
    mapping the last convolutional feature maps to latent patches
    ``z_hw`` in [0, 1]^L, a spatial attention ``a_hw`` (softmax over
    locations) and ``per_class`` prototypes ``p_kj`` per class. With
    ``D_k = sum_hw a_hw min_j ||z_hw - p_kj||^2 / L`` (0 to 1)::

        loss = CE(f(x), y) + cluster_weight * D_y + separation_weight * max(0, margin - min_{k != y} D_k)

    The clustering cost pulls the attended (discriminative) features to
    their own class's prototypes, the separation cost pushes them at least
    ``margin`` away from every other class's. The paper's exact weighting of
    the terms is not reproduced: the formulation follows its abstract and
    ProtoPNet (Chen et al. 2019), on which it builds. Two departures: the
    separation cost is a hinge (ProtoPNet's is unbounded), and the attention
    and prototypes only shape training: the saved classifier is the plain
    small-cnn (its conv features are what the costs separate), so attacks,
    detectors and checkpoints see an ordinary model. Needs an arch with
    ``feature_maps`` (small-cnn).

    Hyper-parameters:
        preset: ``default``; ``quick`` (1 prototype per class); ``paper``
            (10 prototypes per class, 128-D latent, as ProtoPNet's VGG-16 on
            CUB-200-2011; for users with that data, a VGG-16 arch exposing
            ``feature_maps`` and a GPU; not tested here).
        cluster_weight: 0.8.  separation_weight: 0.8.
        margin: on D (0 to 1), 0.3.
        latent_dim: 32.  per_class: prototypes per class, 2.
    """

    name = "maxsep"
    head = "linear"
    defaults: ClassVar[Dict[str, Any]] = {"preset": "default", "cluster_weight": 0.8, "separation_weight": 0.8,
                                          "margin": 0.3, "latent_dim": 32, "per_class": 2}
    ranges: ClassVar[Dict[str, Range]] = {
        "cluster_weight": Range(float, 0), "separation_weight": Range(float, 0), "margin": Range(float, 0, 1),
        "latent_dim": Range(int, 1), "per_class": Range(int, 1)}
    presets = {"default": {}, "quick": {"per_class": 1}, "paper": {"per_class": 10, "latent_dim": 128}}


    def setup(self, model: nn.Module, num_classes: int, input_shape: Tuple[int, ...]) -> List[nn.Module]:
        if not callable(getattr(model.net, "feature_maps", None)):
            raise UsageError(f"defense {self.name} needs an arch with feature maps (small-cnn), "
                             f"got {model.info.arch}")
        with torch.no_grad():
            channels = model.net.feature_maps(torch.zeros(1, *input_shape, device=model.device)).shape[1]
        self.prototypes = AttendedPrototypes(channels, num_classes, self.params["latent_dim"],
                                             self.params["per_class"])
        return [self.prototypes]

    def loss(self, model, x: torch.Tensor, y: torch.Tensor,
             progress: float) -> Tuple[torch.Tensor, Dict[str, float]]:
        with recorded_feature_maps(model.net) as maps:
            logits = model(x)
        d = self.prototypes.distances(maps[0])
        own = F.one_hot(y, d.shape[1]).bool()
        nearest_other = d.masked_fill(own, float("inf")).amin(1)
        terms = {"ce": F.cross_entropy(logits, y), "cluster": d[own].mean(),
                 "separation": (self.params["margin"] - nearest_other).clamp_min(0).mean()}
        p = self.params
        loss = terms["ce"] + p["cluster_weight"] * terms["cluster"] + p["separation_weight"] * terms["separation"]
        return loss, {k: v.item() for k, v in terms.items()}
