"""``pgd-at``: adversarial training on PGD examples (Madry et al.)."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Tuple

import torch
import torch.nn.functional as F

from robench.defenses.adversarial import AdversarialDefense
from robench.params import Range


class PGDAdversarialTraining(AdversarialDefense):
    """PGD adversarial training (Linf), on a linear head.

    Paper: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning
    Models Resistant to Adversarial Attacks", ICLR 2018,
    https://arxiv.org/abs/1706.06083.

    Each batch is replaced by its PGD adversarial examples (uniform random
    start in the eps-ball, ``steps`` signed-gradient steps on the
    cross-entropy, projection onto the ball and [0, 1]) and the network is
    trained on them::

        (1 - clean_weight) * CE(f(x_adv), y) + clean_weight * CE(f(x), y)

    Hyper-parameters (defaults MNIST-like / CIFAR):
        preset: ``default`` (the paper's settings) or ``quick`` (7 steps of
            2.5 * eps / 7: small-cnn on mnist5k in minutes on a CPU).
        eps: Linf radius in pixel space, 0.3 / 8/255.
        step: step size, 0.01 / 2/255.
        steps: PGD steps, 40 / 7.
        warmup_epochs: epochs over which the training eps (and step) rise
            linearly from 0, batch by batch, 1 (see
            :class:`~robench.defenses.adversarial.AdversarialDefense`; 0: full eps
            from the first batch).
        clean_weight: weight of the clean loss, 0 (the paper trains on adversarial examples only).

    Example::

        robench train --defense pgd-at:preset=quick --dataset mnist5k --out pgd_at.pt
    """

    name = "pgd-at"
    head = "linear"
    defaults: ClassVar[Dict[str, Any]] = {**AdversarialDefense.defaults, "clean_weight": 0.0}
    ranges: ClassVar[Dict[str, Range]] = {**AdversarialDefense.ranges, "clean_weight": Range(float, 0, 1)}

    def loss(self, model, x: torch.Tensor, y: torch.Tensor,
             progress: float) -> Tuple[torch.Tensor, Dict[str, float]]:
        x_adv = self.perturb(model, x, lambda xa: F.cross_entropy(model(xa), y), progress)
        logits = model(x_adv)
        adv = F.cross_entropy(logits, y)
        logs = {"adv_ce": adv.item(), "adv_acc": (logits.argmax(1) == y).float().mean().item()}
        w = self.params["clean_weight"]
        if w == 0:
            return adv, logs
        clean = F.cross_entropy(model(x), y)
        return (1 - w) * adv + w * clean, {**logs, "ce": clean.item()}
