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
import weakref
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
        self.cascade = False  # restarts only on the rows still robust (see GradientAttack._best_of)
        self.amp: Optional[torch.dtype] = None  # e.g. torch.bfloat16: forward passes under autocast
        self.compile = False  # forward passes through torch.compile (see compiled_forward)
        self._generator: Optional[torch.Generator] = None
        self._calls = 0
        self._full = 0
        self._rows: Optional[torch.Tensor] = None

    # -- the public call ------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attack a batch.

        Args:
            x: (N, C, H, W) inputs in [0, 1], on any device.
            y: (N,) integer true labels.
            active: optional (N,) bool mask: attack only these rows and return
                the others unchanged (the cascade). A row's random draws are
                those it gets when every row is attacked, so its result does
                not depend on which other rows are active.

        Returns:
            (N, C, H, W) adversarial inputs on ``x``'s device, verified to lie in
            [0, 1] and inside the eps-ball. Whether each one fools the model is
            for the caller to recompute.
        """
        self._calls += 1
        self._generator = None  # each call draws from its own stream (see generator)
        # Callers often sit inside torch.no_grad() or inference_mode(); attacks need autograd.
        with torch.inference_mode(False), torch.enable_grad():
            x_dev, y_dev = self._prepare(x, y)
            self._full, self._rows = len(x_dev), self._active_rows(active, len(x_dev))
            if len(x_dev) == 0 or (self._rows is not None and len(self._rows) == 0):
                return x_dev.to(x.device)
            modes = [(m, m.training) for m in self.model.modules()]
            self.model.eval()
            try:
                if self._rows is None:
                    x_adv = self._run(x_dev, y_dev).detach()
                else:
                    x_adv = x_dev.clone()
                    x_adv[self._rows] = self._run(x_dev[self._rows], y_dev[self._rows]).detach()
            finally:
                for module, training in modes:
                    module.training = training
        verify_adversarial(x_dev, x_adv, self.name, self.norm, self.eps)
        return x_adv.to(x.device)

    def _forward(self, x: torch.Tensor, with_features: bool = False):
        """The model's logits (and features), under autocast and torch.compile when asked.

        Outputs come back in float32 whatever the autocast dtype, so objectives,
        margins and the best-example bookkeeping are always computed in full precision.
        """
        fn = compiled_forward(self.model, with_features) if self.compile else (
            self.model.features_and_logits if with_features else self.model)
        if self.amp is None:
            return fn(x)
        with torch.autocast(device_type=x.device.type, dtype=self.amp):
            out = fn(x)
        return tuple(t.float() for t in out) if with_features else out.float()

    def _active_rows(self, active: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
        if active is None:
            return None
        active = torch.as_tensor(active)
        if active.dtype != torch.bool or active.shape != (n,):
            raise DataError(f"attack {self.name}: active must be a bool mask of shape ({n},)")
        if bool(active.all()):
            return None
        return active.to(self.device).nonzero().squeeze(1)

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
        """The attack's own random stream for the current call, seeded from (``seed``, call number).

        Consecutive batches get different noise, a rerun with the same seed and
        batches is identical, and what one call draws never depends on what an
        earlier call drew (a cascade may attack fewer rows of a batch).
        """
        if self._generator is None:
            mixed = (self.seed * 0x9E3779B97F4A7C15 + self._calls * 0xBF58476D1CE4E5B9) % (1 << 63)
            self._generator = torch.Generator(device=self.device).manual_seed(mixed)
        return self._generator

    def _draw(self, kind: str, shape: Tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Uniform [0, 1) (``kind="rand"``) or normal (``"randn"``) noise of ``shape``.

        Drawn for every row of the call and then indexed, so the rows being
        computed (all of them, or the cascade's still-robust ones) get the
        numbers they would get if every row were computed.
        """
        fn = torch.rand if kind == "rand" else torch.randn
        if self._rows is None or shape[0] == self._full:
            return fn(shape, generator=self.generator, device=like.device, dtype=like.dtype)
        full = fn((self._full, *shape[1:]), generator=self.generator, device=like.device, dtype=like.dtype)
        return full[self._rows]

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
        x = x.detach().to(device=self.device, dtype=dtype, copy=True, non_blocking=x.is_pinned())
        if getattr(self.model, "channels_last", False) and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
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


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled_forward(model: torch.nn.Module, with_features: bool = False) -> Callable:
    """``torch.compile`` of the model's forward (or features_and_logits), compiled once per model.

    ``dynamic=None`` lets the last, smaller batch reuse the graph after one recompile.
    """
    cache = _COMPILED.setdefault(model, {})
    if with_features not in cache:
        fn = model.features_and_logits if with_features else model.forward
        cache[with_features] = torch.compile(fn)
    return cache[with_features]


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
            features, logits = self._forward(x, with_features=True)
        else:
            features, logits = None, self._forward(x)
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
        With ``self.cascade`` a restart runs only on the rows the objective has
        not yet won (AutoAttack's cascade), and a won row keeps the example that
        won it: fewer passes, and per row at least as strong.
        """
        best = attempt(x, y).detach()
        if restarts == 1:
            return best
        if self.cascade:
            return self._restart_unwon(attempt, x, y, best, restarts)
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

    def _restart_unwon(self, attempt, x: torch.Tensor, y: torch.Tensor, best: torch.Tensor,
                       restarts: int) -> torch.Tensor:
        saved = self._rows
        rows = saved if saved is not None else torch.arange(len(x), device=x.device)
        full = self._full
        with torch.no_grad():
            best_loss, won = self._judge(best, y)
        try:
            for _ in range(restarts - 1):
                todo = (~won).nonzero().squeeze(1)
                if len(todo) == 0:
                    break
                self._rows, self._full = rows[todo], full  # aligned draws for the rows still to do
                candidate = attempt(x[todo], y[todo]).detach()
                with torch.no_grad():
                    loss, cand_won = self._judge(candidate, y[todo])
                better = cand_won | (loss > best_loss[todo])
                pick = todo[better]
                best[pick] = candidate[better]
                best_loss[pick] = loss[better]
                won[pick] = cand_won[better]
        finally:
            self._rows = saved
        return best

    def _judge(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample objective and whether its goal is reached, from one forward pass."""
        features, logits = self._forward(x, with_features=True)
        self.n_forward += len(x)
        return self.objective_fn(logits, y, features), self.objective_fn.won(logits, y, features)
