"""``i2fr``: adversarial training with intra- and inter-class feature regularisation."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from robench.defenses.adversarial import AdversarialDefense
from robench.params import Range


class ClassCentres(nn.Module):
    """Moving averages of each class's unit-length clean feature (a buffer, never saved)."""

    def __init__(self, num_classes: int, feature_dim: int, momentum: float) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("centres", torch.zeros(num_classes, feature_dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, f: torch.Tensor, y: torch.Tensor) -> None:
        """Fold the batch's class means of ``f`` (unit-length features) into the centres."""
        k = self.centres.shape[0]
        counts = torch.bincount(y, minlength=k).to(f.dtype)
        sums = torch.zeros_like(self.centres).index_add_(0, y, f)
        present = counts > 0
        means = sums[present] / counts[present, None]
        old = self.centres[present]
        fresh = ~self.seen[present, None]
        self.centres[present] = torch.where(fresh, means, self.momentum * old + (1 - self.momentum) * means)
        self.seen |= present


def sphere_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D) x (K, D) -> (N, K) squared distances between the unit vectors of the rows (0 to 4)."""
    return 2.0 - 2.0 * F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()


class I2FR(AdversarialDefense):
    """Intra and Inter Class Feature Regularisation (I2FR) adversarial training, on a linear head.

    Paper: Yu, Xue, Chen, Wang, Ma, "Enhancing Adversarial Robustness for
    Image Classification by Regularizing Class Level Feature Distribution",
    ICIP 2021, https://doi.org/10.1109/ICIP42928.2021.9506383.

    The paper's exact formulas are not public; robench implements what its
    abstract describes. With ``d`` the squared distance between unit-length
    features (``2 - 2 cos``), ``f`` the clean and ``f'`` the adversarial
    feature of a sample of class ``y`` and ``c_k`` moving averages of each
    class's clean features::

        intra = d(f', f) + d(f', c_y)                       # stay with your clean self and your class
        inter = mean_{k != y} max(0, margin - d(f', c_k))   # keep away from other classes
        R(x') = ramp * (intra_weight * intra + inter_weight * inter)
        x'    = argmax_{||x' - x||_inf <= eps} CE(x', y) + R(x')        # R used in generation ...
        loss  = CE(x', y) + R(x') + clean_weight * CE(x, y)              # ... and in training

    ``ramp`` rises linearly from 0 to 1 over the first ``ramp_epochs``: at the
    start the classes' features are not yet apart, and a full-weight pull
    towards one's class centre then wins over the inter-class hinge and
    collapses every class onto one direction (measured on mnist5k without the
    ramp: 21% clean accuracy after 6 quick epochs, where pgd-at reached 95%).
    Unit-length features keep the margin meaningful whatever scale the
    cross-entropy drives the features to; the centres stand in for "samples
    of the same class" and are a buffer of a module from :meth:`setup` (not
    in the checkpoint).

    Hyper-parameters (defaults MNIST-like; CIFAR takes eps 8/255, 7 steps of 2/255):
        preset: ``default`` or ``quick`` (7 steps of 2.5 * eps / 7), as for pgd-at.
        eps, step, steps: the Linf PGD of generation, 0.3, 0.01, 40.
        warmup_epochs: epochs over which generation's eps (and step) rise
            linearly from 0, as for pgd-at, 1.
        intra_weight: 1.0.  inter_weight: 1.0.
        margin: on ``d`` (0 to 4; 1.0 means cosine below 0.5), 1.0.
        momentum: of the class centres, 0.9.
        ramp_epochs: epochs over which R's weight rises from 0 to 1, 2.
        clean_weight: weight of the clean cross-entropy, 0.
    """

    name = "i2fr"
    head = "linear"
    defaults: ClassVar[Dict[str, Any]] = {**AdversarialDefense.defaults, "intra_weight": 1.0,
                                          "inter_weight": 1.0, "margin": 1.0, "momentum": 0.9,
                                          "ramp_epochs": 2.0, "clean_weight": 0.0}
    ranges: ClassVar[Dict[str, Range]] = {
        **AdversarialDefense.ranges, "intra_weight": Range(float, 0), "inter_weight": Range(float, 0),
        "margin": Range(float, 0, 4), "momentum": Range(float, 0, 1, high_open=True),
        "ramp_epochs": Range(float, 0), "clean_weight": Range(float, 0)}

    def setup(self, model: nn.Module, num_classes: int, input_shape: Tuple[int, ...]) -> List[nn.Module]:
        self.centres = ClassCentres(num_classes, model.info.feature_dim, self.params["momentum"])
        return [self.centres]

    def terms(self, f_adv: torch.Tensor, logits: torch.Tensor, f: torch.Tensor,
              y: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Batch means of the cross-entropy and the intra- and inter-class terms."""
        to_centres = sphere_distances(f_adv, self.centres.centres)
        own = F.one_hot(y, to_centres.shape[1]).bool()
        to_clean = (F.normalize(f_adv, dim=1) - F.normalize(f, dim=1)).pow(2).sum(1)
        others = ~own & self.centres.seen[None, :]
        hinge = (self.params["margin"] - to_centres).clamp_min(0) * others
        return {"adv_ce": F.cross_entropy(logits, y),
                "intra": (to_clean + to_centres[own]).mean(),
                "inter": (hinge.sum(1) / others.sum(1).clamp_min(1)).mean()}

    def total(self, terms: Dict[str, torch.Tensor], ramp: float = 1.0) -> torch.Tensor:
        p = self.params
        return terms["adv_ce"] + ramp * (p["intra_weight"] * terms["intra"] + p["inter_weight"] * terms["inter"])

    def loss(self, model, x: torch.Tensor, y: torch.Tensor,
             progress: float) -> Tuple[torch.Tensor, Dict[str, float]]:
        ramp_epochs = self.params["ramp_epochs"]
        ramp = min(1.0, progress / ramp_epochs) if ramp_epochs > 0 else 1.0
        f, logits_clean = model.features_and_logits(x)
        self.centres.update(F.normalize(f.detach(), dim=1), y)
        f_ref = f.detach()
        x_adv = self.perturb(model, x, lambda xa: self.total(self.terms(*model.features_and_logits(xa), f_ref, y),
                                                             ramp), progress)
        f_adv, logits = model.features_and_logits(x_adv)
        terms = self.terms(f_adv, logits, f, y)
        loss = self.total(terms, ramp)
        logs = {k: v.item() for k, v in terms.items()}
        logs["adv_acc"] = (logits.argmax(1) == y).float().mean().item()
        if self.params["clean_weight"] > 0:
            clean = F.cross_entropy(logits_clean, y)
            loss = loss + self.params["clean_weight"] * clean
            logs["ce"] = clean.item()
        return loss, logs
