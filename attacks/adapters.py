"""Adapters: any torchattacks attack (``ta:<Class>``) or ART evasion attack (``art:<Class>``).

Both behave like native attacks: the same ``attack(x, y) -> x_adv`` call, the
same eval-mode handling, pass counters and verification. Keyword arguments go
to the library class unchanged (checked against its signature); ``eps`` is
passed when the class takes one.

Randomness: the libraries draw from the global torch / numpy generators, so
each call runs inside a forked torch RNG and a saved-and-restored numpy state,
seeded with ``seed + call index - 1`` (the call index is the base class's, advanced
once by every call, empty or not): reproducible, and the caller's global RNG is
left exactly as it was. A library draws for the whole batch it is given, so
attacking only some rows (``active=``, the cascade) would change every row's
draws; an adapter therefore runs the library on the full batch and keeps the
active rows (``full_batch``). A point gets the same example with and without
the cascade, at the price of attacking rows that are already won.

Runtime options: ``cascade`` is accepted (the library's own restarts are its
business); ``amp`` and ``compile`` are refused in one line, since the library
runs its own forward passes and robench cannot put them under autocast or compile them.

Examples::
    >>> attack = create_attack("ta:APGD", model, eps=0.3, steps=20)
    >>> attack = create_attack("art:DeepFool", model, eps=0.0, max_iter=50)
"""

from __future__ import annotations

import contextlib
import difflib
import inspect
from typing import Any, ClassVar, Dict, Iterator, List, Optional

import numpy as np
import torch

from robench.attacks.base import Attack
from robench.attacks.params import check_eps
from robench.attacks.runtime import PLAIN, Runtime
from robench.errors import UnknownNameError, UsageError
from robench.params import check_known, check_number

_NORM_NAMES = {"linf": "Linf", "inf": "Linf", "l2": "L2", "2": "L2", "l1": "L1", "1": "L1"}


def norm_name(value: Any) -> Optional[str]:
    """A library's norm argument (np.inf, 2, "L2", "inf", ...) -> "Linf" / "L2" / "L1" / None."""
    if isinstance(value, float) and value == float("inf"):
        return "Linf"
    if isinstance(value, (int, float)) and float(value).is_integer():
        value = int(value)
    return _NORM_NAMES.get(str(value).strip().lower())


class LibraryFamily(Attack):
    """Shared adapter logic; subclasses name the library and build its attack."""

    is_family: ClassVar[bool] = True
    supports: ClassVar[frozenset] = frozenset({"cascade"})
    unsupported_why: ClassVar[str] = "the library runs its own forward passes"
    full_batch: ClassVar[bool] = True
    family: ClassVar[str] = ""
    example: ClassVar[str] = ""
    # Classes whose eps is not called "eps", and eps-taking classes without a norm argument.
    eps_names: ClassVar[Dict[str, str]] = {}
    l2_classes: ClassVar[frozenset] = frozenset()
    other_norms: ClassVar[frozenset] = frozenset()  # classes whose norm may be one we cannot check

    def __init__(self, model: torch.nn.Module, eps: Optional[float], member: str, seed: int = 0,
                 runtime: Runtime = PLAIN, **kwargs: Any) -> None:
        cls = self.resolve(member)
        self.member = cls.__name__
        self.name = f"{self.family}:{self.member}"  # instance attribute: one class, many names
        params = self._signature(cls)
        check_known(self.name, kwargs, list(params))
        eps_name = self.eps_names.get(self.member, "eps")
        takes_eps = eps_name in params
        self.norm = self._norm(params, kwargs) if takes_eps else None
        if takes_eps:
            # A budget in a norm we cannot check (e.g. Wasserstein) is passed on, not verified.
            eps = (check_eps(self.name, eps, self.norm, model) if self.norm
                   else check_number(self.name, "eps", eps, 0.0))
            kwargs[eps_name] = eps
        super().__init__(model, eps if takes_eps and self.norm else None, seed, runtime)
        self.kwargs = self._defaults(params, kwargs)
        try:
            with self._seeded(self.seed):  # some constructors draw random numbers
                self.attack = self._build(cls, self.kwargs)
        except (ValueError, TypeError, AssertionError) as exc:
            raise UsageError(f"{self.name}: {exc}") from None
        self.params.update({k: v for k, v in self.kwargs.items() if _plain(v)})

    # -- what each library decides ----------------------------------------------
    @classmethod
    def members(cls) -> List[str]:
        """The library's attack class names, sorted."""
        raise NotImplementedError

    @classmethod
    def _class(cls, member: str) -> type:
        raise NotImplementedError

    def _build(self, cls: type, kwargs: Dict[str, Any]) -> Any:
        raise NotImplementedError

    def _generate(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _defaults(self, params: Dict[str, Any], kwargs: Dict[str, Any]) -> Dict[str, Any]:
        return kwargs

    # -- shared -----------------------------------------------------------------
    @classmethod
    def arguments(cls, member: str) -> List[str]:  # type: ignore[override]
        """The keyword arguments of the library class ``member``, and ``seed``."""
        names = list(cls._signature(cls.resolve(member)))
        return names + ([] if "seed" in names else ["seed"])

    @classmethod
    def resolve(cls, member: str) -> type:
        """The class named ``member`` (case-insensitive), or UnknownNameError with near names."""
        names = cls.members()
        exact = [n for n in names if n == member] or [n for n in names if n.lower() == member.lower()]
        if len(exact) != 1:
            near = difflib.get_close_matches(member, names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise UnknownNameError(f"unknown attack '{cls.family}:{member}'{hint} "
                                   f"(known {cls.family} classes: {', '.join(names)})")
        return cls._class(exact[0])

    @staticmethod
    def _signature(cls: type) -> Dict[str, Any]:
        """Keyword arguments of ``cls`` after its model / estimator, with defaults."""
        params = list(inspect.signature(cls.__init__).parameters.values())[2:]
        return {p.name: p.default for p in params
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def _norm(self, params: Dict[str, Any], kwargs: Dict[str, Any]) -> Optional[str]:
        return self._member_norm(self.member, params, kwargs)

    @classmethod
    def _member_norm(cls, member: str, params: Dict[str, Any], kwargs: Dict[str, Any]) -> Optional[str]:
        if "norm" not in params:
            return "L2" if member in cls.l2_classes else "Linf"
        value = kwargs.get("norm", params["norm"])
        norm = norm_name(value)
        if norm is None and member not in cls.other_norms:
            raise UsageError(f"{cls.family}:{member}: unknown norm {value!r} (known: Linf, L2, L1)")
        return norm

    @classmethod
    def norm_of(cls, member: str, kwargs: Dict[str, Any]) -> Optional[str]:
        """The distance ``family:member`` with ``kwargs`` measures its budget in (None: no budget),
        so its results rows join the worst case of their norm like a native attack's."""
        klass = cls.resolve(member)
        params = cls._signature(klass)
        if cls.eps_names.get(klass.__name__, "eps") not in params:
            return None
        return cls._member_norm(klass.__name__, params, kwargs)

    def _run(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self._counting(), self._seeded(self.seed + self._calls - 1):
            return self._generate(x, y)

    @contextlib.contextmanager
    def _counting(self) -> Iterator[None]:
        """Count the library's passes through the model with hooks (it calls ``model(x)``)."""

        def backward_hook(n: int):
            def hook(grad: torch.Tensor) -> None:
                self.n_backward += n
            return hook

        def forward_hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                self.n_forward += len(output)
                if output.requires_grad:
                    output.register_hook(backward_hook(len(output)))

        handle = self.model.register_forward_hook(forward_hook)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        devices = [self.device] if self.device.type == "cuda" else []
        state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                np.random.seed(seed % 2**32)
                yield
        finally:
            np.random.set_state(state)


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


class TorchattacksFamily(LibraryFamily):
    """``ta:<Class>``: a torchattacks attack (``ta:APGD``, ``ta:AutoAttack``, ``ta:Square``, ...).

    ``n_classes`` and ``seed`` are filled in from the model and ``seed`` when the
    class takes them. FAB is a minimal-norm attack that may return points
    beyond eps: those samples get their clean input back (failed within budget).
    """

    family = "ta"
    example = "APGD"
    eps_names = {"PIFGSM": "max_epsilon", "PIFGSMPP": "max_epsilon"}
    l2_classes = frozenset({"PGDL2", "PGDRSL2"})
    minimal_norm = frozenset({"FAB"})

    @classmethod
    def members(cls) -> List[str]:
        import torchattacks

        wrappers = set(getattr(torchattacks, "__wrapper__", ()))
        return sorted(n for n in torchattacks.__all__ if n not in wrappers)

    @classmethod
    def _class(cls, member: str) -> type:
        import torchattacks

        return getattr(torchattacks, member)

    def _defaults(self, params, kwargs):
        if "n_classes" in params:
            kwargs.setdefault("n_classes", int(self.model.num_classes))
        if "seed" in params:
            kwargs.setdefault("seed", self.seed)
        return kwargs

    def _build(self, cls, kwargs):
        return cls(self.model, **kwargs)

    def _generate(self, x, y):
        x_adv = self.attack(x, y).detach().to(x.dtype)
        if self.member in self.minimal_norm and self.eps is not None:
            from robench.attacks.verify import distances

            outside = distances(x, x_adv, self.norm) > self.eps
            x_adv = torch.where(outside.view(-1, *[1] * (x.dim() - 1)), x, x_adv)
        return x_adv


class ARTFamily(LibraryFamily):
    """``art:<Class>``: an ART evasion attack on a ``PyTorchClassifier`` (clip_values (0, 1)).

    Numpy only at the boundary. ``verbose`` defaults to False and, unless given,
    ``batch_size`` to the whole batch of each call.
    """

    family = "art"
    example = "ProjectedGradientDescent"
    l2_classes = frozenset({"VirtualAdversarialMethod"})
    other_norms = frozenset({"Wasserstein"})
    # Evasion attacks whose generate() does not return adversarial inputs for an image
    # classifier (patches, object detectors, video, malware) or that need TensorFlow.
    unsupported = frozenset({
        "AdversarialPatch", "AdversarialPatchNumpy", "AdversarialPatchPyTorch",
        "AdversarialTexturePyTorch", "DPatch", "RobustDPatch", "OverloadPyTorch", "SNAL",
        "MalwareGDTensorFlow", "LaserAttack", "FeatureAdversariesNumpy", "FeatureAdversariesPyTorch",
        "GRAPHITEBlackbox", "GRAPHITEWhiteboxPyTorch", "FrameSaliencyAttack",
        "OverTheAirFlickeringPyTorch", "DecisionTreeAttack", "HighConfidenceLowUncertainty",
    })

    @classmethod
    def members(cls) -> List[str]:
        import art.attacks.evasion as evasion
        from art.attacks.attack import EvasionAttack

        return sorted(
            name for name, obj in vars(evasion).items()
            if inspect.isclass(obj) and issubclass(obj, EvasionAttack) and obj is not EvasionAttack
            and name not in cls.unsupported and "TensorFlow" not in name and "ASR" not in name)

    @classmethod
    def _class(cls, member: str) -> type:
        import art.attacks.evasion as evasion

        return getattr(evasion, member)

    def _defaults(self, params, kwargs):
        if "verbose" in params:
            kwargs.setdefault("verbose", False)
        self._auto_batch = "batch_size" in params and "batch_size" not in kwargs
        return kwargs

    def _build(self, cls, kwargs):
        from art.estimators.classification import PyTorchClassifier

        self.classifier = PyTorchClassifier(
            model=self.model, loss=torch.nn.CrossEntropyLoss(),
            input_shape=tuple(self.model.info.input_shape), nb_classes=int(self.model.num_classes),
            clip_values=(0.0, 1.0), device_type="gpu" if self.device.type == "cuda" else "cpu")
        return cls(self.classifier, **kwargs)

    def _generate(self, x, y):
        if self._auto_batch:
            self.attack.set_params(batch_size=len(x))
        x_np = x.cpu().numpy()
        x_adv = self.attack.generate(x=x_np, y=y.cpu().numpy())
        return torch.from_numpy(np.asarray(x_adv, dtype=np.float32)).to(device=x.device, dtype=x.dtype)
