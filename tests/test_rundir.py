"""The run directory's owner: one writer at a time, arrays stored once, shared permissions, OOM halving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from robench.cli import cli
from robench.rundir import RunDir

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    from robench.checkpoints import save_checkpoint
    from robench.training import TrainConfig, train

    cfg = TrainConfig(defense="softmax", dataset="digits", epochs=1, feature_dim=8, seed=0, device="cpu")
    return str(save_checkpoint(train(cfg, quiet=True), tmp_path_factory.mktemp("ckpt") / "tiny.pt"))


def attack_args(ckpt: str, out: Path, *extra: str) -> list:
    return ["attack", "--model", ckpt, "--attack", "fgsm", "--attack", "pgd:steps=2", "--eps", "0.1",
            "--detector", "max-softmax", "--detector", "mahalanobis", "--n", "16", "--batch-size", "8",
            "--device", "cpu", "--out", str(out), "-q", *extra]


def holder(out: Path) -> subprocess.Popen:
    """Another process that opens ``out`` for writing and keeps it (as a long run would)."""
    code = ("import sys, time; from robench.rundir import RunDir; "
            "RunDir.open(sys.argv[1], command='robench attack'); print('open', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_a_second_writer_is_refused_naming_the_first_and_a_killed_one_leaves_no_lock(ckpt, tmp_path):
    out = tmp_path / "run"
    first = holder(out)
    try:
        result = CliRunner().invoke(cli, attack_args(ckpt, out))
        assert result.exit_code == 2, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and f"another robench process (pid {first.pid}, robench attack" in lines[0], lines
        assert not (out / "manifest.json").exists()  # the refused run wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # SIGKILLed: the OS released its lock; the next run proceeds and leaves no lock file behind.
    result = CliRunner().invoke(cli, attack_args(ckpt, out), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not (out / ".lock").exists() and RunDir.is_run(out)


def test_cells_sharing_a_crafted_set_store_it_once(ckpt, tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, attack_args(ckpt, out), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = RunDir(out)
    ids = run.cell_ids()
    assert len(ids) == 4  # (fgsm, pgd) x two detectors, gray-box: each attack crafted once
    refs = [json.loads((run.cell_dir(c) / "arrays.json").read_text()) for c in ids]
    assert len({r["x_adv"] for r in refs}) == 2 and len({r["adv_features"] for r in refs}) == 2
    assert len(list((out / "arrays").glob("*.npy.gz"))) == 4
    by_attack = {}
    for c in ids:
        by_attack.setdefault(run.cell_row(c)["attack"], []).append(run.x_adv(c))
    for arrays in by_attack.values():
        assert np.array_equal(arrays[0], arrays[1]) and arrays[0].shape == (16, 1, 8, 8)
    # --no-save-adv: no examples stored, everything else the same.
    other = tmp_path / "no-adv"
    result = CliRunner().invoke(cli, attack_args(ckpt, other, "--no-save-adv"), catch_exceptions=False)
    assert result.exit_code == 0 and all(RunDir(other).x_adv(c) is None for c in RunDir(other).cell_ids())
    assert (other / "results.csv").read_bytes() == (out / "results.csv").read_bytes()


def test_arrays_are_stored_compressed_exactly_and_uncompressed_runs_still_read(ckpt, tmp_path):
    import gzip

    out = tmp_path / "run"
    assert CliRunner().invoke(cli, attack_args(ckpt, out), catch_exceptions=False).exit_code == 0
    run = RunDir(out)
    cell = run.cell_ids()[0]
    refs = json.loads((run.cell_dir(cell) / "arrays.json").read_text())
    stored = out / "arrays" / f"{refs['x_adv']}.npy.gz"
    x_adv = run.x_adv(cell)
    raw = gzip.decompress(stored.read_bytes())
    assert len(stored.read_bytes()) < len(raw)  # digits' examples compress
    # A run written before compression: the same array as a plain .npy under the same digest.
    stored.unlink()
    np.save(out / "arrays" / f"{refs['x_adv']}.npy", x_adv)
    assert np.array_equal(RunDir(out).x_adv(cell), x_adv) and x_adv.dtype == np.float32


def test_outputs_are_readable_by_the_group_as_the_umask_says(ckpt, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert CliRunner().invoke(cli, attack_args(ckpt, out), catch_exceptions=False).exit_code == 0
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o777 == 0o644 for p in files), \
        sorted({oct(p.stat().st_mode & 0o777) for p in files})
    assert all(p.stat().st_mode & 0o777 == 0o755 for p in out.rglob("*") if p.is_dir())


def test_the_save_adv_budget_skips_large_runs_with_a_line(ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBENCH_SAVE_ADV_GB", "1e-9")
    result = CliRunner().invoke(cli, attack_args(ckpt, tmp_path / "run"), catch_exceptions=False)
    assert result.exit_code == 0 and "not storing adversarial examples" in result.stderr
    run = RunDir(tmp_path / "run")
    assert all(run.x_adv(c) is None for c in run.cell_ids()) and run.manifest()["save_adv"] is False


def test_a_batch_out_of_gpu_memory_is_halved_and_recorded(ckpt, tmp_path, monkeypatch):
    """Simulated on the CPU: the attack raises CUDA's OOM error for batches above 4 points."""
    from robench.attacks.base import Attack

    original = Attack.__call__

    def tight(self, x, y, active=None):
        if len(x) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, x, y, active=active)

    monkeypatch.setattr(Attack, "__call__", tight)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, attack_args(ckpt, out, "--no-sanity"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("out of GPU memory at a batch of 8") == 2  # once per crafted cell
    halved = RunDir(out).manifest()["oom_halved_batches"]
    assert len(halved) == 4 and all(sizes == [8, 8] for sizes in halved.values())
    assert len(RunDir(out).results()) >= 4
