"""robench: adversarial-robustness benchmarking for feature-distribution defenses.

The front door (torch is imported only when one of these is called)::

    import robench
    model = robench.load_model("gm.pt")
    attack = robench.create_attack("pgd", model, eps=0.3, steps=40)
    x_adv = attack(x, y)
    detector = robench.create_detector("gm-likelihood", model).fit(x_train, y_train)
    scores = detector.score(x)
    robench.list_attacks("pgd*")
"""

from __future__ import annotations

from typing import Any, List, Optional

from robench.registry import register, registry

__version__ = "0.1.0"

__all__ = [
    "__version__", "register", "registry", "load_model", "load_dataset", "create_attack",
    "create_detector", "create_defense", "list_attacks", "list_defenses", "list_detectors",
    "list_datasets", "list_archs", "train",
]


def load_model(path: str, arch: Optional[str] = None, device: str = "cpu"):
    """Load a robench or official GM-Loss checkpoint as a frozen ``RobustModel``."""
    from robench.checkpoints import load_model as _load
    from robench.devices import resolve_device

    return _load(path, arch=arch, device=resolve_device(device))


def load_dataset(spec: str, seed: int = 0, train_half: Optional[str] = None):
    """Load a dataset by spec (``mnist5k``, ``digits``, ``mnist:PATH``, ``cifar10:PATH``, ``npz:PATH``)."""
    from robench.data import load_dataset as _load

    return _load(spec, seed=seed, train_half=train_half)


def create_attack(name: str, model, eps: float, **kwargs: Any):
    """Build a registered attack (``fgsm``, ``pgd``, ``cw-l2``, ``ta:APGD``, ``art:DeepFool``...)."""
    from robench.attacks import create_attack as _create

    return _create(name, model, eps=eps, **kwargs)


def create_detector(name: str, model, **kwargs: Any):
    """Build a registered detector; ``auto`` picks gm-likelihood for GM models, else mahalanobis."""
    from robench.defenses.detectors import create_detector as _create

    return _create(name, model, **kwargs)


def create_defense(name: str, dataset: str = "mnist5k", **params: Any):
    """Build a registered training defense with its hyper-parameters."""
    from robench.training import build_defense

    return build_defense(name, dataset, params)


def train(defense: str, dataset: str, **kwargs: Any):
    """Train a model: ``robench.train("gm", "mnist5k", arch="small-cnn", epochs=10)``."""
    from robench.training import TrainConfig, train as _train

    return _train(TrainConfig(defense=defense, dataset=dataset, **kwargs), quiet=True)


def _lister(kind: str):
    def list_kind(pattern: Optional[str] = None) -> List[str]:
        return registry(kind).names(pattern)

    list_kind.__name__ = f"list_{kind}"
    list_kind.__doc__ = f"Registered {kind}, optionally filtered by an fnmatch pattern."
    return list_kind


list_defenses = _lister("defenses")
list_detectors = _lister("detectors")
list_datasets = _lister("datasets")
list_archs = _lister("archs")


def list_attacks(pattern: Optional[str] = None, adapters: bool = False) -> List[str]:
    """Registered attacks, optionally filtered; ``adapters=True`` expands ``ta:*`` and ``art:*``
    (imports torchattacks and ART)."""
    names = registry("attacks").names()
    if adapters:
        from robench.attacks import expand_families

        names = expand_families(names)
    import fnmatch

    return fnmatch.filter(names, pattern) if pattern else names
