"""Adaptive pieces of the white-box attacks on a detector: BPDA scoring and selective / orthogonal steps.

Kept apart from the base class because each is one idea from one paper:

* :func:`bpda_input`: a detector whose score first moves the input
  (``detector.preprocess``, e.g. mahalanobis with ``noise > 0``) is attacked
  through a straight-through estimate of that step (BPDA, Athalye, Carlini,
  Wagner, ICML 2018, https://arxiv.org/abs/1802.00420): the value of the real
  step, the gradient of the identity. Scoring ``score_from`` of the unmoved
  input instead would silently attack a different function.
* :func:`alternating_direction`: selective and orthogonal PGD (Bryniarski,
  Hingun, Pachuca, Wang, Carlini, ICLR 2022, https://arxiv.org/abs/2106.15023):
  a point still classified correctly steps on the classifier term, a
  misclassified one on the detector term; "orthogonal" first removes from each
  gradient its component along the other, so one goal's step does not undo the other.
  Where the two gradients are nearly parallel (a GM head with the gm-likelihood
  detector: the score is minus the largest logit, which the margin shares),
  little is left after the projection and orthogonal steps barely move; use
  selective there (measured in benchmarks/bench_apgd.py).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from robench.attacks.objectives import misclassified


def bpda_input(detector: Any, x: torch.Tensor) -> Optional[torch.Tensor]:
    """``x + (preprocess(x) - x).detach()``, or None when the detector has no input step.

    A detector declares its step as ``preprocess(x) -> x'`` (identity: it returns
    its argument itself, then there is nothing to estimate).
    """
    preprocess = getattr(detector, "preprocess", None)
    if preprocess is None:
        return None
    x_in = x.detach()
    stepped = preprocess(x_in)
    if stepped is x_in:
        return None
    return x + (stepped.detach() - x_in)


def without(g: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``g`` minus its per-sample component along ``other`` (unchanged where ``other`` is zero)."""
    flat_g, flat_o = g.flatten(1), other.flatten(1)
    coef = (flat_g * flat_o).sum(1) / flat_o.pow(2).sum(1).clamp_min(1e-30)
    return (flat_g - coef.unsqueeze(1) * flat_o).view_as(g)


def alternating_direction(update: str, x_adv: torch.Tensor, classifier: torch.Tensor,
                          detector: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The selective / orthogonal step direction at ``x_adv`` (two backward passes).

    Args:
        update: "selective" or "orthogonal".
        x_adv: (N, ...) the leaf the terms were computed from.
        classifier, detector: (N,) the two terms to maximise (the joint objective's ``parts``).
        logits: (N, K) at ``x_adv``, to tell which points are still classified correctly.
        y: (N,) true labels, or (N, 2) (true, target) pairs.
    """
    (g_cls,) = torch.autograd.grad(classifier.sum(), x_adv, retain_graph=True)
    (g_det,) = torch.autograd.grad(detector.sum(), x_adv)
    if update == "orthogonal":
        g_cls, g_det = without(g_cls, g_det), without(g_det, g_cls)
    correct = ~misclassified(logits.detach(), y)
    return torch.where(correct.view(-1, *[1] * (x_adv.dim() - 1)), g_cls, g_det)
