"""The attack base classes: the invariants every attack shares, so each attack file is only its idea.

:class:`Attack` owns what must hold for any attack, native or adapted: eval
mode during the attack and the caller's modes restored after, inputs checked
to lie in [0, 1], tensors moved once to the model's device, pass counters, the
local random generator, and verification of every result.

:class:`GradientAttack` adds the objective (``objective=``) and one helper that
computes per-sample losses and their input gradient.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple

import torch

from robench.attacks.objectives import JOINT_OPTIONS, Objective, make_objective
from robench.attacks.params import check_eps, check_seed
from robench.attacks.verify import verify_adversarial
from robench.errors import DataError, UsageError


class Attack:
    """Base of every robench attack: ``attack(x, y) -> x_adv``.

    Subclasses set ``name`` and ``norm`` and implement :meth:`_run`.

    Attributes:
        name: the registry name (``pgd``, ``ta:APGD``, ...).
        norm: the distance the budget is measured in ("Linf", "L2", "L1"), or
            None when the attack has no distance.
        eps: the budget, or None when the attack is unbounded (then only the
            [0, 1] range is verified).
        objective: the objective's name ("ce", "margin", ..., or "default" for
            a library's own loss).
        params: the resolved arguments, for result tables.
        n_forward, n_backward: per-sample passes so far (each pass adds its
            batch size), summed over calls; :meth:`reset_counters` zeroes them.
    """

    name: ClassVar[str] = ""
    norm: ClassVar[Optional[str]] = None

    def __init__(self, model: torch.nn.Module, eps: Optional[float], seed: int = 0) -> None:
        self.model = model
        self.eps = None if eps is None else check_eps(self.name, eps, self.norm, model)
        self.seed = check_seed(self.name, seed)
        self.objective = "default"
        self.params: Dict[str, Any] = {"eps": self.eps, "seed": self.seed}
        self.n_forward = 0
        self.n_backward = 0
        self._generator: Optional[torch.Generator] = None

    # -- the public call ------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Attack a batch.

        Args:
            x: (N, C, H, W) inputs in [0, 1], on any device.
            y: (N,) integer true labels.

        Returns:
            (N, C, H, W) adversarial inputs on ``x``'s device, verified to lie in
            [0, 1] and inside the eps-ball. Whether each one fools the model is
            for the caller to recompute.
        """
        # Callers often sit inside torch.no_grad() or inference_mode(); attacks need autograd.
        with torch.inference_mode(False), torch.enable_grad():
            x_dev, y_dev = self._prepare(x, y)
            if len(x_dev) == 0:
                return x_dev.to(x.device)
            modes = [(m, m.training) for m in self.model.modules()]
            self.model.eval()
            try:
                x_adv = self._run(x_dev, y_dev).detach()
            finally:
                for module, training in modes:
                    module.training = training
        verify_adversarial(x_dev, x_adv, self.name, self.norm, self.eps)
        return x_adv.to(x.device)

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack itself: x, y on the model's device, model in eval mode."""
        raise NotImplementedError

    # -- shared machinery -------------------------------------------------------
    @property
    def device(self) -> torch.device:
        device = getattr(self.model, "device", None)
        if device is None:
            device = next(iter(self.model.parameters()), torch.empty(0)).device
        return torch.device(device)

    @property
    def generator(self) -> torch.Generator:
        """The attack's own random stream, seeded with ``seed`` on first use.

        One stream per attack object, so consecutive batches get different
        noise while a rerun with the same seed and batches is identical.
        """
        if self._generator is None:
            self._generator = torch.Generator(device=self.device).manual_seed(self.seed)
        return self._generator

    def reset_counters(self) -> None:
        self.n_forward = 0
        self.n_backward = 0

    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
            raise DataError(f"attack {self.name}: x must be a float tensor (N, C, H, W)")
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or len(y) != len(x) or y.is_floating_point():
            raise DataError(f"attack {self.name}: y must be an integer tensor of shape ({len(x)},)")
        weight = next(iter(self.model.parameters()), None)
        dtype = weight.dtype if weight is not None else x.dtype
        # One copy to the model's device: the attack never writes into the caller's tensor.
        x = x.detach().to(device=self.device, dtype=dtype, copy=True)
        y = y.detach().to(device=self.device, dtype=torch.long)
        if len(x):
            low, high = (float(v) for v in torch.aminmax(x))
            if not (low >= 0.0 and high <= 1.0):
                raise DataError(f"attack {self.name}: inputs must be in [0, 1], got min {low:.4g}, max {high:.4g}")
            k = getattr(self.model, "num_classes", None)
            y_low, y_high = (int(v) for v in torch.aminmax(y))
            if y_low < 0 or (k is not None and y_high >= k):
                raise DataError(f"attack {self.name}: labels must be in [0, {k}), got {y_low}..{y_high}")
        return x, y

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def known_arguments(cls: type) -> List[str]:
    """The named keyword arguments of ``cls.__init__`` after ``model``, for error messages."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


class GradientAttack(Attack):
    """An attack driven by an objective's input gradient (``objective=`` and its options).

    Args:
        model: the :class:`~robench.models.RobustModel` to attack.
        eps: the budget in pixel space.
        objective: "ce", "margin", "lkd" or "joint" (see :mod:`robench.attacks.objectives`).
        seed: seeds the attack's own generator (random starts).
        **objective_options: ``detector``, ``fpr``, ``detector_weight`` for ``joint``.
    """

    def __init__(self, model: torch.nn.Module, eps: float, objective: str = "ce", seed: int = 0,
                 **objective_options: Any) -> None:
        if eps is None:
            raise UsageError(f"{self.name}: eps is required")
        super().__init__(model, eps, seed)
        self._check_options(objective_options)
        self.objective_fn: Objective = make_objective(self.name, objective, objective_options)
        self.objective = objective
        self.params.update(objective=objective, **self.objective_fn.params())

    def _check_options(self, objective_options: Dict[str, Any]) -> None:
        """Keywords that reached ``**objective_options`` but are not joint options are typos."""
        unknown = sorted(set(objective_options) - set(JOINT_OPTIONS))
        if unknown:
            known = known_arguments(type(self)) + list(JOINT_OPTIONS)
            raise UsageError(f"{self.name}: unknown argument(s) {', '.join(unknown)} "
                             f"(known: {', '.join(known)})")

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample objective (N,), counting one forward pass."""
        if self.objective_fn.needs_features:
            features, logits = self.model.features_and_logits(x)
        else:
            features, logits = None, self.model(x)
        self.n_forward += len(x)
        return self.objective_fn(logits, y, features)

    def _gradient(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Gradient of the summed per-sample objective w.r.t. the input only.

        ``x_adv`` becomes (or stays) a leaf that requires grad; the model's
        parameters are frozen, so autograd touches nothing else.
        """
        if not x_adv.requires_grad:
            x_adv.requires_grad_(True)
        loss = self._loss(x_adv, y)
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        self.n_backward += len(x_adv)
        return grad

    def _best_of(self, attempt: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 x: torch.Tensor, y: torch.Tensor, restarts: int) -> torch.Tensor:
        """Run ``attempt`` ``restarts`` times and keep, per sample, the highest final objective.

        The objective (not a prediction) decides, so it works for every
        objective, including ``joint``; a single attempt costs no extra pass.
        """
        best = attempt(x, y).detach()
        if restarts == 1:
            return best
        with torch.no_grad():
            best_loss = self._loss(best, y)
        for _ in range(restarts - 1):
            candidate = attempt(x, y).detach()
            with torch.no_grad():
                loss = self._loss(candidate, y)
            better = loss > best_loss
            best = torch.where(better.view(-1, *[1] * (x.dim() - 1)), candidate, best)
            best_loss = torch.where(better, loss, best_loss)
        return best
