"""The gradient-masking sanity report: a planted masking model is flagged, a normal one is not."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from robench.archs import SmallCNN
from robench.models import RobustModel
from robench.registry import registry
from robench.sanity import check_results, sanity_report

ROW = {"model": "m", "attack_params": "", "detector": "none", "n": 100}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


class QuantizedSmallCNN(SmallCNN):
    """SmallCNN that rounds its (normalised) input to a grid: classic gradient masking.

    torch.round has a zero derivative everywhere, so every input gradient is 0
    while the predictions barely change.
    """

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return super().embed(torch.round(x * 4) / 4)


class NoisySmallCNN(SmallCNN):
    """SmallCNN with noise on its features at test time: a nondeterministic forward pass."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = super().embed(x)
        return f + 0.5 * torch.randn_like(f)


@pytest.fixture(scope="module")
def trained():
    from robench.training import TrainConfig, train

    cfg = TrainConfig(defense="softmax", dataset="digits", epochs=2, feature_dim=8, seed=0, device="cpu")
    return train(cfg, quiet=True)


def planted(model: RobustModel, arch_cls, arch: str, name: str) -> RobustModel:
    net = arch_cls(**model.info.arch_kwargs)
    net.load_state_dict(model.net.state_dict())
    return RobustModel(net, dataclasses.replace(model.info, arch=arch, name=name)).freeze()


@pytest.fixture
def masking_arch():
    registry("archs").register("quantized-small-cnn", QuantizedSmallCNN)
    yield "quantized-small-cnn"
    registry("archs").unregister("quantized-small-cnn")


def flags(report: pd.DataFrame, model: str) -> dict:
    rows = report[report["model"] == model]
    return dict(zip(rows["check"], rows["flagged"]))


def test_planted_gradient_masking_model_is_flagged_in_a_run(trained, masking_arch, tmp_path):
    from robench.checkpoints import save_checkpoint
    from robench.config import RunConfig
    from robench.runner import run_attack

    masked = save_checkpoint(planted(trained, QuantizedSmallCNN, masking_arch, "masked"), tmp_path / "masked.pt")
    normal = save_checkpoint(trained, tmp_path / "normal.pt")
    cfg = RunConfig(models=[str(masked), str(normal)], attacks=["fgsm", "pgd:steps=3"], eps=[0.1, 0.3],
                       detectors=["none"], n=40, batch_size=40, device="cpu")
    summary = run_attack(cfg, str(tmp_path / "run"), quiet=True).text()

    report = pd.read_csv(tmp_path / "run" / "sanity.csv")
    assert list(report.columns) == ["model", "check", "flagged", "evidence"]
    masked_flags, normal_flags = flags(report, "masked"), flags(report, "normal")
    assert masked_flags["input gradients non-zero and finite"]
    evidence = report[(report["model"] == "masked") & (report["check"] == "input gradients non-zero and finite")]
    assert evidence["evidence"].iloc[0].startswith("100.0% of 40 samples have zero or NaN input gradients")
    assert not normal_flags["input gradients non-zero and finite"]
    assert not normal_flags["deterministic forward pass"] and not masked_flags["deterministic forward pass"]
    assert "FLAGGED" in summary and "masked: input gradients non-zero and finite" in summary
    assert "normal: input gradients" not in summary


def test_nondeterministic_model_is_flagged(trained):
    noisy = planted(trained, NoisySmallCNN, "small-cnn", "noisy")
    from robench.data import load_dataset

    x, y = load_dataset("digits", seed=0).split("test", 40)
    with torch.random.fork_rng():
        report = sanity_report(pd.DataFrame(), {"noisy": (noisy, x, y)})
    row = report[report["check"] == "deterministic forward pass"].iloc[0]
    assert row["flagged"] and "max diff between two passes" in row["evidence"]


def test_attack_no_better_than_random_noise_is_flagged(trained):
    from robench.data import load_dataset

    x, y = load_dataset("digits", seed=0).split("test", 40)
    claimed = pd.DataFrame([{**ROW, "model": "weak", "attack": "pgd", "norm": "Linf", "eps": 0.3,
                             "threat": "gray-box", "robust_acc": 1.0}])  # an attack that did nothing
    report = sanity_report(claimed, {"weak": (trained, x, y)})
    row = report[report["check"] == "attack beats random noise (Linf)"].iloc[0]
    assert row["flagged"] and "random sign noise at Linf eps 0.3" in row["evidence"]


def frame(*rows):
    return pd.DataFrame([{**ROW, "norm": "Linf", **r} for r in rows])


def test_robust_accuracy_rising_with_eps_is_flagged():
    df = frame({"attack": "pgd", "eps": 0.1, "threat": "gray-box", "robust_acc": 0.30},
               {"attack": "pgd", "eps": 0.2, "threat": "gray-box", "robust_acc": 0.50},
               {"attack": "fgsm", "eps": 0.1, "threat": "gray-box", "robust_acc": 0.10},
               {"attack": "fgsm", "eps": 0.2, "threat": "gray-box", "robust_acc": 0.60})
    checks = {r["check"]: r for r in check_results(df)}
    mono = checks["robust accuracy non-increasing in eps"]
    assert mono["flagged"] and "pgd gray-box: 0.300 at eps 0.1 < 0.500 at eps 0.2" in mono["evidence"]
    # FGSM is single-step: not held to monotonicity, but here it beats PGD at eps 0.1.
    single = checks["single-step attack no stronger than iterative"]
    assert single["flagged"] and "fgsm 0.100 < pgd 0.300 at eps 0.1" in single["evidence"]


def test_gray_box_beating_white_box_is_flagged():
    df = frame({"attack": "pgd", "eps": 0.1, "threat": "white-box", "robust_acc": 0.40},
               {"attack": "pgd", "eps": 0.1, "threat": "gray-box", "robust_acc": 0.20},
               {"attack": "pgd", "eps": 0.2, "threat": "white-box", "robust_acc": 0.10},
               {"attack": "pgd", "eps": 0.2, "threat": "black-box", "robust_acc": 0.30})
    row = {r["check"]: r for r in check_results(df)}["white-box at least as strong as gray- and black-box"]
    assert row["flagged"] and row["evidence"] == "gray-box 0.200 < white-box 0.400 for pgd eps 0.1"


def test_consistent_results_raise_no_flag():
    df = frame({"attack": "pgd", "eps": 0.1, "threat": "white-box", "robust_acc": 0.20},
               {"attack": "pgd", "eps": 0.1, "threat": "gray-box", "robust_acc": 0.25},
               {"attack": "pgd", "eps": 0.2, "threat": "gray-box", "robust_acc": 0.05},
               {"attack": "fgsm", "eps": 0.1, "threat": "gray-box", "robust_acc": 0.40})
    assert not any(r["flagged"] for r in check_results(df))
