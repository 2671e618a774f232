"""BIM (iterative FGSM): PGD from the clean point, without random start or restarts."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, Optional

import torch

from robench.attacks.pgd import PGD
from robench.params import Range


class BIM(PGD):
    r"""BIM or iterative-FGSM in the paper 'Adversarial Examples in the Physical World'
    [https://arxiv.org/abs/1607.02533]

    Distance Measure: Linf

    Arguments:
        model (RobustModel): model to attack (inputs in [0, 1]).
        eps (float): maximum perturbation, in [0, 1].
        steps (int): number of steps. (Default: 10)
        step_size (float): step per iteration, in (0, 1]. (Default: 2.5 * eps / steps)
        objective (str): "ce", "margin", "dlr", "lkd" or "joint". (Default: "ce")
        seed (int): recorded only; BIM is deterministic. (Default: 0)
        **options: ``targets``, ``eot``, ``update``, ``runtime`` and the joint
            objective's ``detector``, ``fpr``, ``detector_weight`` (see GradientAttack).

    Shape:
        - x: (N, C, H, W) in [0, 1]; y: (N,) labels; output: (N, C, H, W).

    Examples::
        >>> attack = BIM(model, eps=0.3, steps=10)
        >>> x_adv = attack(x, y)
    """

    name = "bim"
    ranges: ClassVar[Dict[str, Range]] = {k: v for k, v in PGD.ranges.items() if k != "restarts"}

    def __init__(self, model: torch.nn.Module, eps: float, steps: int = 10,
                 step_size: Optional[float] = None, objective: str = "ce", seed: int = 0,
                 **options: Any) -> None:
        self._check_options(options)  # before PGD sees a second random_start
        super().__init__(model, eps, steps=steps, step_size=step_size, random_start=False,
                         restarts=1, objective=objective, seed=seed, **options)
        for fixed in ("random_start", "restarts"):
            del self.params[fixed]
