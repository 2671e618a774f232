"""CUDA paths end to end (skipped without a GPU): determinism, agreement with the CPU, bf16/compile, auto batch."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

TOLERANCE = 0.005  # a CUDA run's robust accuracy within 0.5 points of the CPU run's on the same points


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    from robench.checkpoints import save_checkpoint
    from robench.training import TrainConfig, train

    cfg = TrainConfig(defense="gm", dataset="digits", epochs=4, feature_dim=16, seed=0, device="cpu")
    return str(save_checkpoint(train(cfg, quiet=True), tmp_path_factory.mktemp("gpu") / "gm.pt"))


def run(ckpt: str, out, **options) -> pd.DataFrame:
    from robench.config import RunConfig
    from robench.runner import run_attack

    cfg = RunConfig(models=[ckpt], attacks=["fgsm", "pgd:steps=10", "apgd:steps=10"], eps=[0.1, 0.2],
                    threats=["gray-box", "white-box"], detectors=["gm-likelihood"], n=200, batch_size=100,
                    **options)
    return run_attack(cfg, str(out), quiet=True).results


def test_a_cuda_run_is_deterministic_and_agrees_with_the_cpu(ckpt, tmp_path):
    first = run(ckpt, tmp_path / "cuda1", device="cuda")
    second = run(ckpt, tmp_path / "cuda2", device="cuda")
    assert (tmp_path / "cuda1" / "results.csv").read_bytes() == (tmp_path / "cuda2" / "results.csv").read_bytes()
    cpu = run(ckpt, tmp_path / "cpu", device="cpu")
    keys = ["attack", "eps", "threat", "detector"]
    merged = first.merge(cpu, on=keys, suffixes=("_cuda", "_cpu"))
    assert len(merged) == len(first) == len(second)
    gap = (merged["robust_acc_cuda"] - merged["robust_acc_cpu"]).abs().max()
    assert gap <= TOLERANCE + 1e-12, merged[keys + ["robust_acc_cuda", "robust_acc_cpu"]]
    manifest = json.loads((tmp_path / "cuda1" / "manifest.json").read_text())
    assert manifest["gpu_path"]["pinned_memory"] and manifest["device"].startswith("cuda")


def test_bf16_and_compile_run_and_are_checked_against_fp32(ckpt, tmp_path):
    from robench.rundir import RunDir

    results = run(ckpt, tmp_path / "fast", device="cuda", amp="bf16", compile=True)
    assert len(results)
    sanity = RunDir(tmp_path / "fast").sanity()
    row = sanity[sanity["check"] == "bf16 autocast agrees with fp32"]
    assert len(row) == 1 and not bool(row["flagged"].iloc[0]), row["evidence"].tolist()


def test_auto_batch_size_fits_and_is_recorded(ckpt, tmp_path):
    from robench.rundir import RunDir

    run(ckpt, tmp_path / "auto", device="cuda", batch_size="auto")
    manifest = RunDir(tmp_path / "auto").manifest()
    assert isinstance(manifest["batch_size"], int) and manifest["batch_size"] >= 1
    assert "oom_halved_batches" not in manifest
