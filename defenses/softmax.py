"""``softmax``: the plain cross-entropy baseline."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from robench.defenses.base import Defense


class Softmax(Defense):
    """Softmax cross-entropy on a linear head: the undefended baseline.

    Hyper-parameters: none.
    """

    name = "softmax"
    head = "linear"

    def loss(self, model, x: torch.Tensor, y: torch.Tensor,
             progress: float) -> Tuple[torch.Tensor, Dict[str, float]]:
        loss = F.cross_entropy(model(x), y)
        return loss, {"ce": loss.item()}
