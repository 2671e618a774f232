"""The interface every training defense implements, and the argument checks it owns."""

from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Mapping, Tuple

import torch
import torch.nn as nn

from robench.errors import UsageError
from robench.params import Range, check_known, check_params, is_number


class Defense:
    """A training objective (and any modules it trains beside the classifier).

    Subclasses set ``name``, ``head`` (the classifier head they need: ``linear``
    or ``gm``), ``defaults`` (hyper-parameters, optionally per dataset family
    via :meth:`default_params`) with a :class:`~robench.params.Range` in
    ``ranges`` for every numeric one, and implement :meth:`loss`.

    Attributes:
        min_clean_acc: the clean validation accuracy below which a model trained
            with this defense is reported as failed (``near_chance``), on top of
            the 2x-chance floor every defense gets.
    """

    name: ClassVar[str] = ""
    head: ClassVar[str] = "linear"
    defaults: ClassVar[Dict[str, Any]] = {}
    ranges: ClassVar[Dict[str, Range]] = {}
    min_clean_acc: ClassVar[float] = 0.0

    def __init__(self, dataset: str = "mnist5k", **params: Any) -> None:
        defaults = self.default_params(dataset)
        check_known(self.where, params, list(defaults), "parameter")
        # Checked before and after resolving: derived values (presets) are computed from checked inputs.
        self.params: Dict[str, Any] = self._checked({**defaults, **params}, defaults)
        self.params = self._checked(self.resolve(params), defaults)
        self.validate()

    @property
    def where(self) -> str:
        """How error messages name this defense."""
        return f"defense {self.name}"

    @classmethod
    def default_params(cls, dataset: str) -> Dict[str, Any]:
        return dict(cls.defaults)

    def resolve(self, given: Mapping[str, Any]) -> Dict[str, Any]:
        """The final parameters from ``self.params`` and the names the user gave (default: as they are)."""
        return dict(self.params)

    def validate(self) -> None:
        """Raise :class:`UsageError` for combinations ``ranges`` cannot express (default: none)."""

    def _checked(self, values: Dict[str, Any], defaults: Mapping[str, Any]) -> Dict[str, Any]:
        # A numeric default without a declared range (a plugin's) still gets a type check.
        for key, value in values.items():
            if key not in self.ranges and is_number(defaults.get(key)) and not is_number(value):
                raise UsageError(f"{self.where}: {key} must be a number, got {value!r}")
        return check_params(self.where, values, self.ranges)

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
