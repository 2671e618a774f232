"""``ddar``: disentangled deep autoencoding regularisation (appearance and geometry codes)."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from robench.defenses.adversarial import PresetDefense
from robench.params import Range


class DisentangledDecoder(nn.Module):
    """Features -> (appearance code -> template image, geometric code -> warp) -> reconstruction.

    The warp is an affine transform plus a coarse deformation field
    (``field_size`` x ``field_size``, bilinearly upsampled), both starting at
    the identity, applied to the template with ``grid_sample``.
    """

    def __init__(self, feature_dim: int, input_shape: Tuple[int, ...], appearance_dim: int,
                 geometry_dim: int, hidden: int, field_size: int) -> None:
        super().__init__()
        self.shape = tuple(input_shape)
        c, h, w = self.shape
        self.appearance = nn.Linear(feature_dim, appearance_dim)
        self.geometry = nn.Linear(feature_dim, geometry_dim)
        self.template = nn.Sequential(nn.Linear(appearance_dim, hidden), nn.ReLU(), nn.Linear(hidden, c * h * w))
        self.affine = nn.Linear(geometry_dim, 6)
        self.field = nn.Linear(geometry_dim, 2 * field_size * field_size)
        self.field_size = field_size
        for layer in (self.affine, self.field):  # start at the identity warp
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        with torch.no_grad():
            self.affine.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(self, f: torch.Tensor) -> Dict[str, torch.Tensor]:
        n, (c, h, w) = f.shape[0], self.shape
        g = self.geometry(f)
        template = torch.sigmoid(self.template(self.appearance(f))).view(n, c, h, w)
        theta = self.affine(g).view(n, 2, 3)
        coarse = self.field(g).view(n, 2, self.field_size, self.field_size)
        flow = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
        grid = F.affine_grid(theta, [n, c, h, w], align_corners=False) + flow.permute(0, 2, 3, 1)
        recon = F.grid_sample(template, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return {"recon": recon, "template": template, "theta": theta, "coarse": coarse}


class DDAR(PresetDefense):
    """Disentangled Deep Autoencoding Regularisation (DDAR), on a linear head.

    Paper: Duan, Min, Li, Cai, Xu, Ni, "Disentangled Deep Autoencoding
    Regularization for Robust Image Classification", arXiv 2019,
    https://arxiv.org/abs/1902.11134.

    The classifier's features also feed a decoder (trained beside it, not
    saved: test time uses only the classifier). The decoder splits the
    feature into an appearance code, decoded to a template image ``T``, and
    a geometric code, decoded to an affine transform ``A`` plus a coarse
    deformation field ``u``; the reconstruction is ``T`` warped by ``A + u``.
    The paper's exact decoder and weights are not reproduced; robench
    implements the formulation its abstract and figures describe::

        loss = CE(f(x), y) + recon_weight * mean (x_hat - x)^2
             + smooth_weight * TV(u) + warp_weight * (mean u^2 + mean (A - I)^2)
             + template_weight * mean_i (T_i - mean_{j: y_j = y_i} T_j)^2

    The last term (batch class means, detached) asks the appearance code to
    carry what a class looks like, and leaves pose and stroke to the
    geometric code: the disentanglement. Codes are linear projections of the
    feature, so any ``feature_dim`` works.

    Hyper-parameters (one set for every dataset):
        preset: ``default`` or ``quick`` (the same values: ddar is already cheap).
        recon_weight: 1.0.  smooth_weight: 0.1.  warp_weight: 0.1.  template_weight: 0.1.
        appearance_dim: 16.  geometry_dim: 8.  hidden: 256 (the template decoder's width).
        field_size: side of the coarse deformation field, 4.
    """

    name = "ddar"
    head = "linear"
    defaults: ClassVar[Dict[str, Any]] = {
        "preset": "default", "recon_weight": 1.0, "smooth_weight": 0.1, "warp_weight": 0.1,
        "template_weight": 0.1, "appearance_dim": 16, "geometry_dim": 8, "hidden": 256, "field_size": 4}
    ranges: ClassVar[Dict[str, Range]] = {
        **{k: Range(float, 0) for k in ("recon_weight", "smooth_weight", "warp_weight", "template_weight")},
        **{k: Range(int, 1) for k in ("appearance_dim", "geometry_dim", "hidden")},
        "field_size": Range(int, 2)}  # a 1x1 field is a translation the affine part already has
    presets = {"default": {}, "quick": {}}


    def setup(self, model: nn.Module, num_classes: int, input_shape: Tuple[int, ...]) -> List[nn.Module]:
        p = self.params
        self.decoder = DisentangledDecoder(model.info.feature_dim, input_shape, p["appearance_dim"],
                                           p["geometry_dim"], p["hidden"], p["field_size"])
        return [self.decoder]

    def loss(self, model, x: torch.Tensor, y: torch.Tensor,
             progress: float) -> Tuple[torch.Tensor, Dict[str, float]]:
        f, logits = model.features_and_logits(x)
        out = self.decoder(f)
        terms = {"ce": F.cross_entropy(logits, y), "recon": F.mse_loss(out["recon"], x),
                 "smooth": total_variation(out["coarse"]),
                 "warp": out["coarse"].pow(2).mean() + (out["theta"] - _identity(out["theta"])).pow(2).mean(),
                 "template": class_spread(out["template"], y)}
        p = self.params
        loss = (terms["ce"] + p["recon_weight"] * terms["recon"] + p["smooth_weight"] * terms["smooth"]
                + p["warp_weight"] * terms["warp"] + p["template_weight"] * terms["template"])
        return loss, {k: v.item() for k, v in terms.items()}


def total_variation(u: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring cells of a (N, 2, S, S) field."""
    return (u[..., 1:, :] - u[..., :-1, :]).pow(2).mean() + (u[..., :, 1:] - u[..., :, :-1]).pow(2).mean()


def class_spread(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of each template to its class's (detached) batch mean template."""
    flat = t.flatten(1)
    k = int(y.max()) + 1
    counts = torch.bincount(y, minlength=k).to(flat.dtype)
    means = torch.zeros(k, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add_(0, y, flat.detach())
    means = means / counts.clamp_min(1)[:, None]
    return (flat - means[y]).pow(2).mean()


def _identity(theta: torch.Tensor) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=theta.dtype, device=theta.device).expand_as(theta)
