"""The interface every training defense implements."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Tuple

import torch
import torch.nn as nn

from robench.errors import UsageError


class Defense:
    """A training objective (and any modules it trains beside the classifier).

    Subclasses set ``name``, ``head`` (the classifier head they need: ``linear``
    or ``gm``) and ``defaults`` (hyper-parameters, optionally per dataset
    family via :meth:`default_params`), and implement :meth:`loss`.
    """

    name: ClassVar[str] = ""
    head: ClassVar[str] = "linear"
    defaults: ClassVar[Dict[str, Any]] = {}

    def __init__(self, dataset: str = "mnist5k", **params: Any) -> None:
        defaults = self.default_params(dataset)
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise UsageError(
                f"defense {self.name}: unknown parameter(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(defaults)) or 'none'})")
        self.params: Dict[str, Any] = {**defaults, **params}
        for key, value in self.params.items():
            default = defaults[key]
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise UsageError(f"defense {self.name}: {key} must be a number, got {value!r}")

    @classmethod
    def default_params(cls, dataset: str) -> Dict[str, Any]:
        return dict(cls.defaults)

    def setup(self, model: nn.Module, num_classes: int, input_shape: Tuple[int, ...]) -> List[nn.Module]:
        """Build modules trained beside the classifier (decoders, prototypes); default none."""
        return []

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             progress: float) -> Tuple[torch.Tensor, Dict[str, float]]:
        """The training loss on one batch.

        Args:
            model: the :class:`~robench.models.RobustModel` being trained (train mode).
            x: (N, C, H, W) inputs in [0, 1].
            y: (N,) labels.
            progress: training progress in epochs (fractional), for ramps.

        Returns:
            The scalar loss and a dict of floats to show in the progress bar.
        """
        raise NotImplementedError
