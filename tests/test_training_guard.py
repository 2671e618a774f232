"""Training that cannot silently fail: a near-chance model is flagged in its metrics, by
``robench train`` (warning line, exit 1 unless --allow-weak), by ``weak_model_warning`` and by
the sanity report."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from click.testing import CliRunner

import robench
from robench.cli import cli
from robench.defenses.softmax import Softmax
from robench.registry import registry
from robench.sanity import check_model
from robench.training import TrainConfig, clean_acc_floor, train, weak_model_warning

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py

FROZEN = ["--lr", "1e-9"]  # one epoch at this rate leaves the network at its random initialisation
CHECK = "clean accuracy above 2x chance"


def _train_cli(tmp_path, *extra: str, defense: str = "softmax"):
    out = tmp_path / "m.pt"
    args = ["train", "--defense", defense, "--dataset", "digits", "--epochs", "1", "--device", "cpu",
            "--feature-dim", "8", "--quiet", "--out", str(out), *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False), out


@pytest.fixture(scope="module")
def weak(digits):
    cfg = TrainConfig(defense="softmax", dataset="digits", epochs=1, lr=1e-9, seed=0, device="cpu", feature_dim=8)
    return train(cfg, data=digits, quiet=True)


def test_untrained_model_is_near_chance_in_its_metrics(weak, softmax_model):
    m = weak.info.metrics
    assert m["clean_val_acc"] < 0.2 and m["clean_acc_floor"] == 0.2 and m["near_chance"] is True
    assert softmax_model.info.metrics["near_chance"] is False
    warning = weak_model_warning(weak)
    assert warning and "near chance" in warning and f"{m['clean_val_acc']:.4f}" in warning
    assert "meaningless" in warning and "\n" not in warning
    assert weak_model_warning(softmax_model) is None


def test_robench_train_warns_and_exits_1_but_keeps_the_checkpoint(tmp_path):
    result, out = _train_cli(tmp_path, *FROZEN)
    assert result.exit_code == 1, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "near chance" in warnings[0] and "--allow-weak" in warnings[0]
    assert "Traceback" not in result.output
    loaded = robench.load_model(str(out))  # finished work is never lost
    assert loaded.info.metrics["near_chance"] is True
    assert weak_model_warning(loaded).startswith("model 'm' is near chance")


def test_allow_weak_exits_0_with_the_warning(tmp_path):
    result, out = _train_cli(tmp_path, *FROZEN, "--allow-weak")
    assert result.exit_code == 0, result.output
    assert "Warning:" in result.output and "kept because of --allow-weak" in result.output
    assert robench.load_model(str(out)).info.metrics["near_chance"] is True
    help_text = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    assert "--allow-weak" in help_text and "a near-chance model makes every robustness number" in help_text


def test_a_trained_model_exits_0_without_a_warning(tmp_path):
    result, out = _train_cli(tmp_path)
    assert result.exit_code == 0 and "Warning" not in result.output, result.output
    assert robench.load_model(str(out)).info.metrics["near_chance"] is False


class StrictSoftmax(Softmax):
    """Softmax that states a floor no one-epoch digits model reaches."""

    name = "strict-softmax"
    min_clean_acc = 0.99


@pytest.fixture
def strict():
    registry("defenses").register("strict-softmax", StrictSoftmax)
    yield "strict-softmax"
    registry("defenses").unregister("strict-softmax")


def test_a_defense_floor_above_2x_chance_counts(strict, tmp_path):
    assert clean_acc_floor(10, StrictSoftmax()) == 0.99 and clean_acc_floor(10) == 0.2
    result, out = _train_cli(tmp_path, defense=strict)
    assert result.exit_code == 1 and "below 0.9900" in result.output, result.output
    metrics = robench.load_model(str(out)).info.metrics
    assert 0.2 < metrics["clean_val_acc"] < 0.99 and metrics["near_chance"] is True


def test_older_checkpoints_are_judged_from_clean_val_acc(weak):
    old = _with_info(weak, dataclasses.replace(weak.info, metrics={"clean_val_acc": 0.12}))
    assert "0.1200 is below 0.2000" in weak_model_warning(old)
    fine = _with_info(weak, dataclasses.replace(weak.info, metrics={"clean_val_acc": 0.85}))
    assert weak_model_warning(fine) is None
    assert weak_model_warning(_with_info(weak, dataclasses.replace(weak.info, metrics={"acc": 0.1}))) is None


def _with_info(model, info):
    """The same network under other checkpoint metadata."""
    from robench.models import RobustModel

    return RobustModel(model.net, info).freeze()


def test_sanity_report_flags_a_near_chance_model(weak, softmax_model, digits):
    x, y = digits.split("test", 40)
    rows = {r["check"]: r for r in check_model(weak, x, y, {})}
    assert rows[CHECK]["flagged"] and "near chance" in rows[CHECK]["evidence"]
    good = {r["check"]: r for r in check_model(softmax_model, x, y, {})}
    assert not good[CHECK]["flagged"] and good[CHECK]["evidence"].startswith("clean accuracy 0.9")


def test_sanity_report_measures_models_without_training_metrics(weak, digits):
    """A checkpoint that says nothing about its training (official GM code) is judged on the run's points."""
    silent = _with_info(weak, dataclasses.replace(weak.info, metrics={}))
    assert weak_model_warning(silent) is None
    x, y = digits.split("test", 40)
    row = next(r for r in check_model(silent, x, y, {}) if r["check"] == CHECK)
    assert row["flagged"] and row["evidence"].endswith("on 40 points (2x chance 0.200)")
    few = next(r for r in check_model(silent, x[:10], y[:10], {}) if r["check"] == CHECK)
    assert not few["flagged"]  # 10 points cannot tell
    with torch.no_grad():
        assert float((silent(x).argmax(1) == y).float().mean()) < 0.2
