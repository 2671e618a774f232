"""The attack base classes: the invariants every attack shares, so each attack file is only its idea.

:class:`Attack` owns what must hold for any attack, native or adapted: eval
mode during the attack and the caller's modes restored after, inputs checked
to lie in [0, 1], tensors moved once to the model's device, pass counters, the
local random generator, the runtime options (:class:`~robench.attacks.runtime.Runtime`),
declared argument ranges, and verification of every result.

:class:`GradientAttack` adds the objective (``objective=``) and the options every
gradient attack takes (``targets``, ``eot``, ``update``, the joint objective's
``detector``/``fpr``/``detector_weight``), and one helper, :meth:`GradientAttack._evaluate`,
that computes the per-sample objective and its input gradient. The per-sample
search strategies (restarts, targets, best-so-far) are in :mod:`robench.attacks.search`.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch

from robench.attacks.adaptive import alternating_direction, bpda_input
from robench.attacks.objectives import JOINT_OPTIONS, JOINT_RANGES, Objective, make_objective
from robench.attacks.params import check_eps
from robench.attacks.runtime import OPTIONS as RUNTIME_OPTIONS
from robench.attacks.runtime import PLAIN, Runtime, compiled_forward
from robench.attacks.search import Search
from robench.attacks.streams import RowStreams
from robench.attacks.verify import verify_adversarial
from robench.errors import DataError, UsageError
from robench.params import Range, check_bool, check_choice, check_known

class Attack(RowStreams):
    """Base of every robench attack: ``attack(x, y) -> x_adv``.

    Subclasses set ``name`` and ``norm``, declare the range of every numeric
    argument in ``ranges`` and implement :meth:`_run`.

    Attributes:
        name: the registry name (``pgd``, ``ta:APGD``, ...).
        norm: the distance the budget is measured in ("Linf", "L2", "L1"), or
            None when the attack has no distance.
        ranges: the declared range of each numeric argument (:class:`robench.params.Range`).
            ``eps`` is not among them: its range depends on the norm and the model
            (:func:`robench.attacks.params.eps_range`); ``runtime`` and ``detector``
            are objects, not numbers.
        supports: the :class:`Runtime` options the attack honours; asking for
            another is a UsageError saying ``unsupported_why``.
        full_batch: the attack draws for the whole batch it is given (the
            libraries do), so a subset of rows is cut from a run on the full batch.
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
    ranges: ClassVar[Dict[str, Range]] = {"seed": Range(int, 0)}
    supports: ClassVar[frozenset] = frozenset(RUNTIME_OPTIONS)
    unsupported_why: ClassVar[str] = "this attack does not use it"
    full_batch: ClassVar[bool] = False

    def __init__(self, model: torch.nn.Module, eps: Optional[float], seed: int = 0,
                 runtime: Runtime = PLAIN) -> None:
        self.model = model
        self.eps = None if eps is None else check_eps(self.name, eps, self.norm, model)
        self.seed = Attack.ranges["seed"].check(self.name, "seed", seed)
        self.runtime = self._check_runtime(runtime)
        self.objective = "default"
        self.params: Dict[str, Any] = {"eps": self.eps, "seed": self.seed}
        self.n_forward = 0
        self.n_backward = 0
        self._generator: Optional[torch.Generator] = None
        self._calls = 0  # the one owner: advanced by every call, empty or not (see generator)
        self._stream = 0  # a sub-stream of the call (the multi-targeted passes)
        self._full = 0
        self._rows: Optional[torch.Tensor] = None

    @classmethod
    def arguments(cls) -> List[str]:
        """The keyword arguments :func:`create_attack` takes for this attack, besides eps and runtime."""
        params = list(inspect.signature(cls.__init__).parameters.values())[2:]
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name not in ("eps", "runtime")]

    def _check_runtime(self, runtime: Optional[Runtime]) -> Runtime:
        runtime = PLAIN if runtime is None else runtime
        if not isinstance(runtime, Runtime):
            raise UsageError(f"{self.name}: runtime must be a robench.attacks.Runtime, got {type(runtime).__name__}")
        for option in runtime.requested():
            if option not in self.supports:
                raise UsageError(f"{self.name}: --{option} is not supported: {self.unsupported_why}")
        return runtime

    @property
    def cascade(self) -> bool:
        """Restarts (and later targets) run only on the rows not yet won (AutoAttack's cascade)."""
        return self.runtime.cascade

    @property
    def amp(self) -> Optional[torch.dtype]:
        """The autocast dtype of the forward passes (``torch.bfloat16``) or None."""
        return self.runtime.dtype

    @property
    def compile(self) -> bool:
        return self.runtime.compile

    def _set(self, **values: Any) -> None:
        """Check each value (its declared range, else true/false), keep it as an attribute and in ``params``."""
        for key, value in values.items():
            # A subclass may drop a range it fixes itself (BIM: restarts=1); its parent's still applies.
            declared = next((c.ranges[key] for c in type(self).__mro__ if key in getattr(c, "ranges", {})), None)
            value = declared.check(self.name, key, value) if declared else check_bool(self.name, key, value)
            setattr(self, key, value)
            self.params[key] = value

    # -- the public call ------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor,
                 active: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attack a batch.

        Args:
            x: (N, C, H, W) inputs in [0, 1], on any device.
            y: (N,) integer true labels.
            active: optional (N,) bool mask: attack only these rows and return
                the others unchanged (the cascade). A row's example is the one it
                gets when every row is attacked, so its result does not depend on
                which other rows are active.

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
            rows = self._active_rows(active, len(x_dev))
            if len(x_dev) == 0 or (rows is not None and len(rows) == 0):
                return x_dev.to(x.device)
            modes = [(m, m.training) for m in self.model.modules()]
            self.model.eval()
            try:
                x_adv = self._run_rows(x_dev, y_dev, rows)
            finally:
                for module, training in modes:
                    module.training = training
        verify_adversarial(x_dev, x_adv, self.name, self.norm, self.eps)
        return x_adv.to(x.device)

    def _run_rows(self, x: torch.Tensor, y: torch.Tensor, rows: Optional[torch.Tensor]) -> torch.Tensor:
        self._full, self._rows = len(x), None
        if rows is None:
            return self._run(x, y).detach()
        x_adv = x.clone()
        if self.full_batch:
            x_adv[rows] = self._run(x, y).detach()[rows]
        else:
            self._rows = rows
            x_adv[rows] = self._run(x[rows], y[rows]).detach()
        return x_adv

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack itself: x, y on the model's device, model in eval mode."""
        raise NotImplementedError

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

    @property
    def device(self) -> torch.device:
        device = getattr(self.model, "device", None)
        if device is None:
            device = next(iter(self.model.parameters()), torch.empty(0)).device
        return torch.device(device)

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


# Options every gradient attack takes besides its own, with their defaults.
GRADIENT_OPTIONS: Dict[str, Any] = {"targets": None, "eot": 1, "update": "joint",
                                    "detector": None, "fpr": 0.05, "detector_weight": 1.0}
UPDATES = ("joint", "selective", "orthogonal")


class GradientAttack(Search, Attack):
    """An attack driven by an objective's input gradient.

    Args:
        model: the :class:`~robench.models.RobustModel` to attack.
        eps: the budget in pixel space.
        objective: "ce", "margin", "dlr", "lkd" or "joint" (see :mod:`robench.attacks.objectives`).
        seed: seeds the attack's own generator (random starts).
        runtime: amp / compile / cascade (:class:`~robench.attacks.runtime.Runtime`).
        **options: ``targets`` (None or K in [1, classes - 1]: multi-targeted, one run per
            target among the K highest other classes by clean logit), ``eot`` (gradients
            averaged over that many draws, >= 1), ``update`` ("joint", "selective" or
            "orthogonal"; the last two need objective "joint"), and the joint objective's
            ``detector``, ``fpr``, ``detector_weight``.
    """

    ranges: ClassVar[Dict[str, Range]] = {**Attack.ranges, "targets": Range(int, 1, optional=True),
                                          "eot": Range(int, 1), **JOINT_RANGES}

    def __init__(self, model: torch.nn.Module, eps: float, objective: str = "ce", seed: int = 0,
                 runtime: Runtime = PLAIN, **options: Any) -> None:
        if eps is None:
            raise UsageError(f"{self.name}: eps is required")
        super().__init__(model, eps, seed, runtime)
        self._check_options(options)
        given = {**GRADIENT_OPTIONS, **options}
        self.eot = self.ranges["eot"].check(self.name, "eot", given["eot"])
        targets = self.ranges["targets"].check(self.name, "targets", given["targets"])
        self.update = check_choice(self.name, "update", given["update"], UPDATES)
        joint = {k: options[k] for k in JOINT_OPTIONS if k in options}
        self.objective_fn: Objective = make_objective(self.name, objective, joint)
        self.objective = objective
        self.targets = self._check_targets(targets)
        if self.update != "joint" and objective != "joint":
            raise UsageError(f"{self.name}: update={self.update!r} needs objective='joint' "
                             f"(it alternates the classifier and detector terms), not {objective!r}")
        self.params.update(objective=objective, **self.objective_fn.params())
        self.params.update({k: given[k] for k in ("targets", "eot", "update") if given[k] != GRADIENT_OPTIONS[k]})
        self._tracker = None  # a BestSoFar while one attempt's steps are tracked (see Search)

    @classmethod
    def arguments(cls) -> List[str]:
        named = [a for a in super().arguments() if a != "options"]
        return named + [k for k in GRADIENT_OPTIONS if k not in named]

    def _check_options(self, options: Dict[str, Any]) -> None:
        """Keywords that reached ``**options`` but are not options are typos."""
        check_known(self.name, options, self.arguments() + ["runtime"])

    def _check_targets(self, targets: Optional[int]) -> Optional[int]:
        k = getattr(self.model, "num_classes", None)
        need = self.objective_fn.min_classes if targets is None else self.objective_fn.min_classes_targeted
        if k is not None and int(k) < need:
            kind = "targeted " if targets is not None else ""
            raise UsageError(f"{self.name}: {kind}objective {self.objective!r} needs at least {need} classes, "
                             f"the model has {k}")
        if targets is None or k is None:
            return targets
        return Range(int, 1, int(k) - 1).check(self.name, "targets", targets)

    # -- the objective, its score and its gradient ------------------------------------
    def _outputs(self, x: torch.Tensor):
        """(logits, features or None, detector score or None) at ``x``, counting the passes."""
        fn = self.objective_fn
        if fn.needs_features or fn.uses_detector:
            features, logits = self._forward(x, with_features=True)
        else:
            features, logits = None, self._forward(x)
        self.n_forward += len(x)
        score = self._detector_score(x, features, logits) if fn.uses_detector else None
        return logits, features, score

    def _detector_score(self, x: torch.Tensor, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The detector's score at ``x``, differentiable in ``x``; through its input step by BPDA
        (:func:`~robench.attacks.adaptive.bpda_input`), which counts as one forward and one backward
        pass plus the forward at the stepped input."""
        detector = self.objective_fn.detector
        x_step = bpda_input(detector, x)
        if x_step is not None:
            self.n_forward += 2 * len(x)
            self.n_backward += len(x)
            features, logits = self._forward(x_step, with_features=True)
        return detector.score_from(features, logits)

    def _evaluate(self, x_adv: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(step direction, objective, won) at ``x_adv``, each averaged over ``eot`` draws.

        ``x_adv`` becomes (or stays) a leaf that requires grad; the model's
        parameters are frozen, so autograd touches nothing else. A point counts
        as won only when every draw wins it.
        """
        if not x_adv.requires_grad:
            x_adv.requires_grad_(True)
        grad = loss = won = None
        for _ in range(self.eot):
            logits, features, score = self._outputs(x_adv)
            value = self.objective_fn(logits, y, features, score)
            step = self._direction(x_adv, value, logits, y, features, score)
            with torch.no_grad():
                hit = self.objective_fn.won(logits, y, features, score)
            grad = step if grad is None else grad.add_(step)
            loss = value.detach() if loss is None else loss + value.detach()
            won = hit if won is None else won & hit
        if self.eot > 1:
            grad.div_(self.eot)
            loss = loss / self.eot
        if self._tracker is not None:
            self._tracker.update(x_adv.detach(), loss, won)
        return grad, loss, won

    def _direction(self, x_adv: torch.Tensor, value: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                   features: Optional[torch.Tensor], score: Optional[torch.Tensor]) -> torch.Tensor:
        """The objective's input gradient, or the selective / orthogonal direction (two backward passes)."""
        if self.update == "joint":
            (grad,) = torch.autograd.grad(value.sum(), x_adv)
            self.n_backward += len(x_adv)
            return grad
        classifier, detector = self.objective_fn.parts(logits, y, features, score)
        self.n_backward += 2 * len(x_adv)
        return alternating_direction(self.update, x_adv, classifier, detector, logits, y)

    def _gradient(self, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The step direction at ``x_adv`` (see :meth:`_evaluate`)."""
        return self._evaluate(x_adv, y)[0]

    def _judge(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample objective and whether its goal is reached, from one forward pass (no gradient)."""
        with torch.no_grad():
            logits, features, score = self._outputs(x)
            return self.objective_fn(logits, y, features, score), self.objective_fn.won(logits, y, features, score)

