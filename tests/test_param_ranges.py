"""Every numeric hyper-parameter of every registered attack, defense and detector has a declared
range, and every value just outside it ends in one UsageError line naming the parameter, the
range and the value (issue 15). Parametrised over the registries, so a component is covered the
day it is registered; the ``ta``/``art`` adapter families pass their arguments to other libraries."""

from __future__ import annotations

import inspect
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import robench
from robench.checkpoints import build_model
from robench.errors import UsageError
from robench.models import ModelInfo
from robench.params import Range, is_number
from robench.registry import registry

ADAPTERS = {"ta", "art"}
DATASETS = ("mnist5k", "cifar10:/data")  # defenses may default differently per dataset family
EPS = 0.1


def _names(kind: str) -> List[str]:
    return [n for n in registry(kind).names() if n not in ADAPTERS]


CASES = [(kind, name) for kind in ("attacks", "defenses", "detectors") for name in _names(kind)]


@pytest.fixture(scope="module")
def models() -> Dict[str, Any]:
    """Untrained tiny models with a linear and a GM head (constructing components needs no training)."""
    out = {}
    for head in ("linear", "gm"):
        kwargs = {"num_classes": 10, "feature_dim": 8, "head": head, "in_channels": 1, "input_size": 8}
        info = ModelInfo(arch="small-cnn", arch_kwargs=kwargs, defense="gm" if head == "gm" else "softmax",
                         defense_params={}, dataset="digits", num_classes=10, feature_dim=8,
                         input_shape=(1, 8, 8), mean=(0.3,), std=(0.38,))
        out[head] = build_model(info).eval()
    return out


def numeric_params(kind: str, cls: Any) -> Iterator[Tuple[str, Any]]:
    """(name, default) of every numeric parameter of a registered class."""
    ranges = getattr(cls, "ranges", {})
    if kind == "attacks":
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
            if p.name in ("model", "eps") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            optional = p.default is None and p.name in ranges and ranges[p.name].optional
            if is_number(p.default) or optional:
                yield p.name, p.default
        return
    sources = [cls.default_params(d) for d in DATASETS] if kind == "defenses" else [cls.defaults]
    seen = {}
    for params in sources:
        seen.update({k: v for k, v in params.items() if is_number(v)})
    yield from seen.items()


def build(kind: str, name: str, cls: Any, models: Dict[str, Any], **params: Any) -> Any:
    if kind == "attacks":
        return robench.create_attack(name, models["linear"], eps=EPS, **params)
    if kind == "defenses":
        return robench.create_defense(name, dataset="mnist5k", **params)
    model = models["gm"] if getattr(cls, "requires_gm", False) else models["linear"]
    return robench.create_detector(name, model, **params)


@pytest.mark.parametrize("kind, name", CASES, ids=[f"{k}:{n}" for k, n in CASES])
def test_every_numeric_parameter_has_a_checked_range(kind, name, models):
    cls = registry(kind).get(name)
    build(kind, name, cls, models)  # the defaults themselves are valid
    ranges = getattr(cls, "ranges", {})
    params = dict(numeric_params(kind, cls))
    missing = sorted(set(params) - set(ranges))
    assert not missing, f"{kind} {name}: no declared Range for {', '.join(missing)}"
    for key in params:
        rng: Range = ranges[key]
        assert isinstance(rng, Range), f"{kind} {name}: ranges[{key!r}] is not a Range"
        for value in rng.outside():
            with pytest.raises(UsageError) as err:
                build(kind, name, cls, models, **{key: value})
            message = str(err.value)
            assert key in message and str(rng) in message, f"{name} {key}={value!r}: {message}"
            assert "\n" not in message


def test_the_walk_covers_the_parameters_issue_15_named():
    """The values a new user tried: GM alpha -3 was accepted and trained a model."""
    with pytest.raises(UsageError, match=r"defense gm: alpha must be a number in \[0, inf\), got -3"):
        robench.create_defense("gm", alpha=-3)
    walked = dict(numeric_params("defenses", registry("defenses").get("pgd-at")))
    assert {"eps", "step", "steps", "warmup_epochs", "clean_weight"} <= set(walked)
    assert dict(numeric_params("detectors", registry("detectors").get("kd"))) == {
        "bandwidth": 1.0, "max_per_class": 500, "seed": 0}
