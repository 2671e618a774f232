"""The speed switches change how fast, not what: ``--batch-size auto``, ``--amp bf16``,
``--compile``, channels_last and pinned memory (CPU here; the GPU runs are in benchmarks/)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from robench.attacks import create_attack
from robench.batching import _cpu_per_sample, auto_batch_size, parse_batch_size
from robench.cli import cli
from robench.errors import UsageError
from robench.config import RunConfig
from robench.runner import run_attack


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from robench.checkpoints import save_checkpoint
    from robench.training import TrainConfig, train

    cfg = TrainConfig(defense="softmax", dataset="digits", epochs=2, feature_dim=8, seed=0, device="cpu")
    return str(save_checkpoint(train(cfg, quiet=True), tmp_path_factory.mktemp("ckpt") / "m.pt"))


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("AUTO", "auto"), ("12", 12), (7, 7)])
def test_batch_size_parses(text, expected):
    assert parse_batch_size(text) == expected


@pytest.mark.parametrize("bad", ["0", "-3", "big", 0, 2.5, True])
def test_bad_batch_size_is_a_usage_error(bad):
    with pytest.raises(UsageError, match="integer >= 1 or auto"):
        parse_batch_size(bad)


def test_auto_batch_follows_the_memory_budget(softmax_model, monkeypatch):
    per_sample = _cpu_per_sample(softmax_model, (1, 8, 8))
    # The estimate covers at least the input and every activation of one sample.
    assert per_sample > 8 * 8 * 4
    assert auto_batch_size(softmax_model, (1, 8, 8), 10_000, memory_bytes=37 * per_sample) == 37
    assert auto_batch_size(softmax_model, (1, 8, 8), 20, memory_bytes=10**12) == 20  # never above n
    assert auto_batch_size(softmax_model, (1, 8, 8), 50, memory_bytes=1) == 1
    monkeypatch.setenv("ROBENCH_CPU_MEMORY_GB", str(11 * per_sample / 2**30))
    assert auto_batch_size(softmax_model, (1, 8, 8), 10_000) == 11
    monkeypatch.setenv("ROBENCH_CPU_MEMORY_GB", "lots")
    with pytest.raises(UsageError, match="ROBENCH_CPU_MEMORY_GB"):
        auto_batch_size(softmax_model, (1, 8, 8), 10)


def test_batch_size_auto_run_equals_the_explicit_batch(ckpt, tmp_path, monkeypatch):
    grid = dict(models=[ckpt], attacks=["pgd:steps=3"], eps=[0.1], detectors=["max-softmax"], n=40,
                device="cpu", sanity=False)
    per_sample = _cpu_per_sample(__import__("robench").load_model(ckpt), (1, 8, 8))
    monkeypatch.setenv("ROBENCH_CPU_MEMORY_GB", str(16 * per_sample / 2**30))
    run_attack(RunConfig(**grid, batch_size="auto"), str(tmp_path / "auto"), quiet=True)
    run_attack(RunConfig(**grid, batch_size=16), str(tmp_path / "sixteen"), quiet=True)
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert manifest["config"]["batch_size"] == "auto" and manifest["batch_size"] == 16
    assert (tmp_path / "auto" / "results.csv").read_bytes() == (tmp_path / "sixteen" / "results.csv").read_bytes()


def test_bf16_autocast_crafts_as_strong_an_attack_and_is_checked(ckpt, tmp_path):
    grid = dict(models=[ckpt], attacks=["pgd:steps=5"], eps=[0.1], detectors=["max-softmax"], n=100,
                batch_size=50, device="cpu")
    run_attack(RunConfig(**grid, amp="bf16"), str(tmp_path / "bf16"), quiet=True)
    run_attack(RunConfig(**grid), str(tmp_path / "fp32"), quiet=True)
    import pandas as pd

    bf16, fp32 = (pd.read_csv(tmp_path / r / "results.csv").iloc[0] for r in ("bf16", "fp32"))
    assert 0 < fp32["robust_acc"] < fp32["clean_acc"]
    assert abs(bf16["robust_acc"] - fp32["robust_acc"]) <= 0.02
    sanity = pd.read_csv(tmp_path / "bf16" / "sanity.csv")
    row = sanity[sanity["check"] == "bf16 autocast agrees with fp32"].iloc[0]
    assert f"fp32 {fp32['robust_acc']:.3f}" in row["evidence"]  # the check re-crafted the same cell in fp32
    assert "bf16 autocast" not in set(pd.read_csv(tmp_path / "fp32" / "sanity.csv")["check"])
    manifest = json.loads((tmp_path / "bf16" / "manifest.json").read_text())
    assert manifest["gpu_path"]["amp"] == "bf16"


def test_channels_last_gives_the_same_examples(softmax_model, digits_batch):
    import copy

    from robench.devices import prefer_channels_last

    x, y = digits_batch
    nhwc = copy.deepcopy(softmax_model)
    assert not prefer_channels_last(nhwc)  # CPU: off unless forced
    assert prefer_channels_last(nhwc, force=True) and nhwc.channels_last
    a = create_attack("pgd", softmax_model, eps=0.1, steps=5, seed=1)(x, y)
    b = create_attack("pgd", nhwc, eps=0.1, steps=5, seed=1)(x, y)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.slow
def test_compiled_forward_gives_the_same_examples(softmax_model, digits_batch):
    from robench.attacks import Runtime

    x, y = digits_batch
    plain = create_attack("pgd", softmax_model, eps=0.1, steps=3, seed=1)
    compiled = create_attack("pgd", softmax_model, eps=0.1, steps=3, seed=1, runtime=Runtime(compile=True))
    assert torch.allclose(plain(x[:32], y[:32]), compiled(x[:32], y[:32]), atol=1e-5)
    assert compiled.n_backward == plain.n_backward


@pytest.mark.parametrize("args, words", [
    (["--batch-size", "0"], "integer >= 1 or auto"),
    (["--batch-size", "many"], "integer >= 1 or auto"),
    (["--amp", "fp16"], "fp16"),
])
def test_cli_rejects_bad_speed_options(ckpt, tmp_path, args, words):
    result = CliRunner().invoke(cli, ["attack", "--model", ckpt, "--attack", "fgsm", "--eps", "0.1",
                                      "--out", str(tmp_path / "run"), *args])
    assert result.exit_code == 2 and words in result.output, result.output
    assert not (tmp_path / "run").exists()
