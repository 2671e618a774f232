"""Property test: odd attack specs and suite files, end to end through the CLI (issue 15).

Whatever hypothesis makes of names, ``key=value`` lists (unicode, empty parts, huge
numbers, nan/inf text) and YAML suites (known and unknown keys, bad values, random
structures), ``robench attack`` and ``robench run`` either finish (exit 0) or reject the
input with exit 2 and one ``Error:`` line; no exception but SystemExit escapes, and no
traceback is printed.

Accepted inputs must finish fast, so values that are valid but expensive are not drawn:
step counts stay small (``pgd:steps=1e12`` is a valid, if endless, attack), ``compile``
and the Ray executor are never switched on, and ``--n 2`` overrides every suite's ``n``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from robench.cli import cli
from robench.registry import registry

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

ATTACKS = registry("attacks").names()
COUNTS = ("steps", "restarts", "binary_search_steps")  # valid large values would run for ever
KEYS = ("steps", "step_size", "restarts", "random_start", "objective", "seed", "decay", "lr", "confidence",
        "initial_const", "abort_early", "detector", "fpr", "detector_weight", "binary_search_steps", "eps")
ODD_TEXT = ("", " ", "nan", "NaN", "inf", "-inf", "+inf", "1e400", "-1e400", "1e-400", "9" * 40, "-" + "9" * 40,
            "0x10", "1_000", "true", "false", "none", "null", "=", ":", ",", "ü", "🙂", "\u202e", "0.5", "-0",
            "1e308", "margin", "joint", "lkd", "ce", "default", "None")
SAFE_COUNTS = ("-3", "-1", "0", "1", "2", "3", "0.5", "2.0", "nan", "inf", "1e400", "abc", "", "true", "none", "ü")

PLAIN = ("1", "2", "3", "0.05", "0.01", "0.5", "1.0", "true", "false", "ce", "margin", "0")
ODD_NAMES = ("", " ", "pgd ", "PGD", "pdg", "ta", "art", "ta:", "art:", ":", "pgd:", "ta:Nope", "pgd::", "fgsm:x",
             "ü", "pgd:steps", "ta:PGD", "ta:FGSM:", "art:Nope:steps=1")
ODD_KEYS = ("", " ", "steps ", "-steps", "st-eps", "step-size", "STEPS", "ü")
UNICODE = "<unicode>"
NATIVE = [n for n in ATTACKS if n not in ("ta", "art")]

unicode_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
numbers = st.one_of(st.integers(-10**40, 10**40), st.floats(allow_nan=True, allow_infinity=True)).map(repr)


def mostly(plain, odd, weight: int = 4):
    """Draws from ``plain`` about ``weight`` times as often as from ``odd`` (UNICODE: a random text).

    Mostly registered names, known keys and plain values: a spec with one oddity tests more
    than one with five, and a good share of the specs get accepted and run.
    """
    choice = st.sampled_from(list(plain) * weight + list(odd) + [UNICODE])
    return choice.flatmap(lambda v: unicode_text if v == UNICODE else st.just(v))


names = mostly(NATIVE, ODD_NAMES)
keys = mostly(KEYS, ODD_KEYS, weight=8)


@st.composite
def key_values(draw) -> str:
    key = draw(keys)
    if key.strip().replace("-", "_") in COUNTS:
        value = draw(st.sampled_from(SAFE_COUNTS))
    elif draw(st.integers(0, 4)) == 0:
        value = draw(numbers)
    else:
        value = draw(mostly(PLAIN, ODD_TEXT, weight=2))
    form = draw(st.integers(0, 19))
    return (f"{key}{value}", f"{key}=={value}", f"{key}={value}=")[form] if form < 3 else f"{key}={value}"


@st.composite
def attack_specs(draw) -> str:
    name = draw(names)
    parts = draw(st.lists(mostly(["<kv>"], ["", " ", ",", "="], weight=8).flatmap(
        lambda v: key_values() if v == "<kv>" else st.just(v)), max_size=3))
    if not parts and draw(st.integers(0, 4)):  # 'pgd:' (a family member with no name) now and then
        return name
    return f"{name}:{','.join(parts)}"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, digits) -> str:
    """A softmax small-cnn on digits, one epoch (accepted specs only need a working model)."""
    from robench.checkpoints import save_checkpoint
    from robench.training import TrainConfig, train

    cfg = TrainConfig(defense="softmax", dataset="digits", epochs=1, seed=0, device="cpu", feature_dim=8)
    return str(save_checkpoint(train(cfg, data=digits, quiet=True), tmp_path_factory.mktemp("fuzz") / "tiny.pt"))


def invoke(args: List[str]):
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args!r} raised {type(result.exception).__name__}: {result.exception}") \
            from result.exception
    assert "Traceback" not in result.output, (args, result.output)
    assert result.exit_code in (0, 2), (args, result.exit_code, result.output)
    if result.exit_code == 2:
        errors = [line for line in result.output.splitlines() if line.strip()]
        assert len(errors) == 1 and errors[0].startswith("Error: "), (args, result.output)
    return result


@FUZZ
@given(spec=attack_specs(), threat=st.sampled_from(["gray-box", "white-box"]))
@example(spec="pgd:steps=1,step_size=1e308", threat="gray-box")  # found by this test: a float32 overflow traceback
def test_fuzzed_attack_specs_finish_or_fail_with_one_line(ckpt, spec, threat):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        result = invoke(["attack", "--model", ckpt, "--attack", spec, "--eps", "0.1", "--threat", threat,
                         "--detector", "none", "--n", "2", "--batch-size", "2", "--device", "cpu", "--quiet",
                         "--out", str(out)])
        if result.exit_code == 2:
            assert not out.exists(), f"{spec!r}: a rejected spec left {out} behind"


# -- suite files -----------------------------------------------------------------------------

ODD_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True),
                       st.sampled_from(["", "auto", "x", "ü🙂", "nan", "1e400", "-1", "digits", "none"]),
                       st.just([]), st.just({}), st.lists(st.integers(-2, 3), max_size=3),
                       st.dictionaries(st.sampled_from(["name", "x", "steps"]), st.integers(-1, 2), max_size=2))
# values of these keys that are valid must stay cheap: no Ray, no torch.compile, few threads,
# and --out / --n always come from the command line
CHEAP = {"executor": st.sampled_from(["local", "lokal", "", 3]), "ray_address": st.integers(),
         "compile": st.sampled_from([False, "yes", 1]), "threads": st.sampled_from([1, 0, -1, "x", 2.5]),
         "out": st.integers(), "n": st.sampled_from([2, 0, -1, "x"]),
         "batch_size": st.sampled_from([2, "auto", 0, "lots", -1, 2.5])}
SUITE_KEYS = ("dataset", "models", "surrogate", "attacks", "eps", "threats", "detectors", "seed", "device",
              "sanity", "cascade", "amp") + tuple(CHEAP)


def base_suite(ckpt: str) -> Dict[str, Any]:
    return {"dataset": "digits", "models": [ckpt], "attacks": ["fgsm"], "eps": [0.1], "detectors": ["none"],
            "n": 2, "sanity": False, "device": "cpu"}


@st.composite
def attack_entries(draw) -> Any:
    name = draw(st.sampled_from(ATTACKS + ["pdg", "", "ta:Nope"]))
    if draw(st.booleans()):
        return name
    entry: Dict[str, Any] = {"name": name}
    for key in draw(st.lists(st.sampled_from(KEYS + ("threats", "colour", "")), max_size=3)):
        entry[key] = draw(st.sampled_from([1, 2, 3, -1, "x"]) if key in COUNTS else ODD_VALUES)
    return entry


@st.composite
def model_entries(draw, ckpt: str) -> Any:
    kind = draw(st.sampled_from(["path", "dict", "train", "odd"]))
    if kind == "path":
        return draw(st.sampled_from([ckpt, "/no/such.pt", "", "ü.pt"]))
    if kind == "dict":
        return {"name": draw(st.sampled_from(["tiny", "", "x"])), "path": draw(st.sampled_from([ckpt, "/no.pt"]))}
    if kind == "train":  # always something wrong with it: a valid train spec would train a model
        train = {"defense": draw(st.sampled_from(["softmax", "gm", "softmx", ""])), "epochs": 1,
                 draw(st.sampled_from(["epochs", "lr", "feature_dim", "params", "colour"])):
                     draw(st.sampled_from([0, -1, "x", float("nan"), [], {"alpha": -3}]))}
        return {"name": "t", "train": train}
    return draw(ODD_VALUES)


@st.composite
def suites(draw, ckpt: str) -> Any:
    if draw(st.integers(0, 9)) == 0:  # a random structure, mostly not a suite at all
        return draw(st.recursive(ODD_VALUES, lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(SUITE_KEYS + ("x", "")), inner,
                                                          max_size=4)), max_leaves=8))
    suite = base_suite(ckpt)
    for key in draw(st.lists(st.sampled_from(SUITE_KEYS + ("colour", "modles", "")), max_size=3)):
        if key in CHEAP:
            suite[key] = draw(CHEAP[key])
        elif key == "models":
            suite[key] = draw(st.lists(model_entries(ckpt), max_size=2))
        elif key == "attacks":
            suite[key] = draw(st.lists(attack_entries(), max_size=3))
        elif key == "eps":
            suite[key] = draw(st.one_of(ODD_VALUES, st.lists(st.sampled_from([0, 0.1, 1, 2, -0.1]), max_size=2)))
        elif key == "threats":
            suite[key] = draw(st.sampled_from([["white-box"], ["black-box"], ["grey-box"], "gray-box", [], 3]))
        elif key == "surrogate":
            suite[key] = draw(model_entries(ckpt))
        else:
            suite[key] = draw(ODD_VALUES)
    return suite


@FUZZ
@given(data=st.data())
def test_fuzzed_suite_files_finish_or_fail_with_one_line(ckpt, data):
    suite = data.draw(suites(ckpt))
    raw = data.draw(st.sampled_from([None, None, None, None, "{", "a: [1, 2", "\t- x", "x: *nope", "---\n---\n"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite.yaml"
        path.write_text(raw if raw is not None else yaml.safe_dump(suite, allow_unicode=True), encoding="utf-8")
        out = Path(tmp) / "run"
        result = invoke(["run", str(path), "--out", str(out), "--n", "2", "--quiet"])
        if result.exit_code == 2:
            assert not out.exists() or not any(out.rglob("row.json")), f"{suite!r}: rejected but cells written"
