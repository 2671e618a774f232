"""Interrupted work: killed or Ctrl-C'd at random moments, disk full, finished work is never lost.

A checkpoint is complete or absent; every cell folder present is complete; a
rerun finishes the job; Ctrl-C exits with 130 and one line; a write error is
one line and keeps what was finished.
"""

from __future__ import annotations

import json

import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

import pytest
import torch
from click.testing import CliRunner

import robench.checkpoints
from conftest import ctrl_c_deliverable
from robench.checkpoints import build_model, load_model, save_checkpoint
from robench.cli import cli
from robench.errors import CheckpointError
from robench.models import ModelInfo

TRAIN = ["train", "--defense", "softmax", "--dataset", "digits", "--epochs", "1", "--feature-dim", "8", "-q"]
ATTACK = ["attack", "--attack", "fgsm", "--attack", "bim:steps=3", "--eps", "0.05", "--eps", "0.1",
          "--n", "20", "--batch-size", "20", "--detector", "none", "-q"]
N_CELLS = 4
# Six cells of a few seconds each, so random moments often fall while cells are computed.
LONG_ATTACK = ["attack", "--attack", "fgsm", "--attack", "bim:steps=20", "--eps", "0.05", "--eps", "0.1",
               "--eps", "0.2", "--n", "100", "--batch-size", "100", "--detector", "none", "-q"]
LONG_CELLS = 6
EARLIEST = 1.5  # seconds: the interpreter has imported robench.cli by then (0.5-0.7 s on a busy machine)
INTERRUPTED = "Error: interrupted; finished work was kept"


def spawn(args: List[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "robench.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_deliverable)


def finish(args: List[str], cwd: Path) -> Tuple[str, float]:
    """Run to completion; (stdout, seconds)."""
    t0 = time.perf_counter()
    proc = spawn(args, cwd)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return out, time.perf_counter() - t0


def cell_times(args: List[str], cwd: Path, run: Path) -> Tuple[float, float]:
    """Run to completion, watching ``run/cells``: seconds until the first and the last cell appeared."""
    t0, seen = time.perf_counter(), []
    proc = spawn(args, cwd)
    while proc.poll() is None:
        names = {p.name for p in (run / "cells").glob("[!.]*")}
        seen += [time.perf_counter() - t0] * (len(names) - len(seen))
        time.sleep(0.05)
    assert proc.returncode == 0, proc.communicate()[1]
    assert len(seen) == LONG_CELLS
    return seen[0], seen[-1]


def interrupt(args: List[str], cwd: Path, delay: float, sig: int) -> Tuple[int, str]:
    """Start ``robench ARGS``, send ``sig`` after ``delay`` seconds; (exit code, stderr)."""
    proc = spawn(args, cwd)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def check_ctrl_c(code: int, stderr: str) -> None:
    """Ctrl-C: exit 130 and exactly one line (unless the command had already finished)."""
    if code == 0:
        return
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 130 and len(lines) == 1 and lines[0].startswith(INTERRUPTED), (code, stderr)


def check_checkpoint(path: Path) -> bool:
    """Absent, or a complete checkpoint that loads. Returns whether it is there."""
    if not path.exists():
        return False
    assert load_model(str(path)).info.dataset == "digits"
    return True


def check_cells(run: Path) -> List[str]:
    """Every visible cell folder is complete; returns their ids."""
    cells = run / "cells"
    ids = sorted(p.name for p in cells.iterdir() if not p.name.startswith(".")) if cells.is_dir() else []
    for cell in ids:
        files = {p.name for p in (cells / cell).iterdir()}
        assert {"row.json", "arrays.json"} <= files and files & {"samples.parquet", "samples.csv"}, (cell, files)
        refs = json.loads((cells / cell / "arrays.json").read_text())
        assert (run / "arrays" / f"{refs['adv_features']}.npy.gz").is_file(), (cell, refs)
    return ids


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Tuple[Path, float]:
    """A checkpoint trained by an uninterrupted `robench train`, and how long that took."""
    folder = tmp_path_factory.mktemp("trained")
    _, seconds = finish(TRAIN + ["--out", "soft.pt"], folder)
    return folder / "soft.pt", seconds


@pytest.mark.slow
def test_train_killed_or_interrupted_at_random_moments(tmp_path, trained):
    _, seconds = trained
    rng = random.Random(1)
    out = tmp_path / "model.pt"
    for sig in (signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGINT):
        delay = rng.uniform(EARLIEST, seconds)
        code, stderr = interrupt(TRAIN + ["--out", str(out)], tmp_path, delay, sig)
        if sig == signal.SIGINT:
            check_ctrl_c(code, stderr)
        print(f"train: {sig.name} after {delay:.1f} s: exit {code}, checkpoint {check_checkpoint(out)}")
        assert all(p.name.startswith(".") for p in tmp_path.iterdir() if p != out), list(tmp_path.iterdir())
    finish(TRAIN + ["--out", str(out)], tmp_path)
    assert check_checkpoint(out)
    assert list(tmp_path.iterdir()) == [out]  # temporary files of killed saves are gone too


@pytest.mark.slow
def test_attack_killed_or_interrupted_at_random_moments(tmp_path, trained):
    model, _ = trained
    rng = random.Random(2)
    first, last = cell_times(LONG_ATTACK + ["--model", str(model), "--out", "timing"], tmp_path, tmp_path / "timing")
    run = tmp_path / "run"
    args = LONG_ATTACK + ["--model", str(model), "--out", str(run)]
    finished: List[str] = []
    for sig in (signal.SIGINT, signal.SIGKILL, signal.SIGINT, signal.SIGKILL):
        # A resumed run reaches its first missing cell about as fast as a fresh one reaches its
        # first: up to 60% into the cell phase, each trial has cells left to interrupt.
        delay = rng.uniform(EARLIEST, first + 0.6 * (last - first))
        code, stderr = interrupt(args, tmp_path, delay, sig)
        if sig == signal.SIGINT:
            check_ctrl_c(code, stderr)
        now = check_cells(run)
        print(f"attack: {sig.name} after {delay:.1f} s: exit {code}, {len(now)} of {LONG_CELLS} cells")
        assert set(finished) <= set(now), "a finished cell was lost"
        finished = now
    stdout, _ = finish(args, tmp_path)
    assert len(check_cells(run)) == LONG_CELLS
    assert f"{LONG_CELLS - len(finished)} cells run, {len(finished)} cached" in stdout, stdout
    rows = (run / "results.csv").read_text().strip().splitlines()[1:]
    assert len([r for r in rows if ",worst-case," not in r]) == LONG_CELLS


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, monkeypatch):
    """In process: KeyboardInterrupt inside a command (no timing luck needed)."""
    import robench.commands

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(robench.commands, "run_train", interrupted)
    result = CliRunner().invoke(cli, TRAIN + ["--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 130
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "Error: interrupted; finished work was kept (run the same command again to continue)"]


# -- disk full and write errors ------------------------------------------------------------------

def untrained(path: Path):
    kwargs = {"num_classes": 10, "feature_dim": 8, "head": "linear", "in_channels": 1, "input_size": 8}
    info = ModelInfo(arch="small-cnn", arch_kwargs=kwargs, defense="softmax", defense_params={}, dataset="digits",
                     num_classes=10, feature_dim=8, input_shape=(1, 8, 8), mean=(0.3,), std=(0.38,),
                     split={"seed": 0}, metrics={"clean_test_acc": 0.1, "clean_val_acc": 0.1, "epochs": 1,
                                                 "train_seconds": 0.0})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(info).freeze()
    if path is not None:
        save_checkpoint(model, path)
    return model


def full_disk_after(n_ok: int, where):
    """An ``os.replace`` that fails with ENOSPC from the (n_ok+1)-th call whose destination ``where`` accepts."""
    real = os.replace
    calls = {"n": 0}

    def replace(src, dst, *args, **kwargs):
        if where(Path(dst)):
            calls["n"] += 1
            if calls["n"] > n_ok:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst, *args, **kwargs)

    return replace


def one_error_line(result) -> str:
    assert result.exc_info is None or result.exc_info[0] is SystemExit, result.exception
    # A warning before the work began (this tiny model is near chance) is not part of the failure.
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("Warning: ")]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_disk_full_during_attack_keeps_finished_cells(tmp_path, monkeypatch):
    model = tmp_path / "m.pt"
    untrained(model)
    run = tmp_path / "run"
    args = ATTACK + ["--model", str(model), "--out", str(run)]
    monkeypatch.setattr(os, "replace", full_disk_after(1, lambda dst: dst.parent.name == "cells"))
    line = one_error_line(CliRunner().invoke(cli, args))
    assert "No space left on device" in line and str(run / "cells") in line, line
    kept = check_cells(run)
    assert len(kept) == 1
    monkeypatch.undo()
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.stderr
    assert f"{N_CELLS - 1} cells run, 1 cached" in result.stdout
    assert len(check_cells(run)) == N_CELLS


def test_disk_full_while_saving_a_checkpoint(tmp_path, monkeypatch):
    import robench.training

    monkeypatch.setattr(robench.training, "train", lambda cfg, data=None, quiet=False: untrained(None))
    out = tmp_path / "new" / "m.pt"
    monkeypatch.setattr(os, "replace", full_disk_after(0, lambda dst: dst == out))
    line = one_error_line(CliRunner().invoke(cli, TRAIN + ["--out", str(out)]))
    assert line == f"Error: No space left on device ({out})"
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no temporary file, no new folder


def test_torch_write_failure_is_one_line(tmp_path, monkeypatch):
    """torch.save reports a failed write (disk full inside the zip writer) as a RuntimeError."""
    import robench.training

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 44")

    monkeypatch.setattr(robench.training, "train", lambda cfg, data=None, quiet=False: untrained(None))
    monkeypatch.setattr(robench.checkpoints.torch, "save", failing_save)
    out = tmp_path / "m.pt"
    line = one_error_line(CliRunner().invoke(cli, TRAIN + ["--out", str(out)]))
    assert line.startswith("Error: cannot write the checkpoint (unexpected pos") and str(out) in line, line
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(str(out))


KILLED_MID_WRITE = """
import sys, time
import torch
from robench.checkpoints import atomic_torch_save

def slow_save(obj, fh, *args, **kwargs):
    fh.write(b"PK\\x03\\x04 the first bytes of a checkpoint")
    fh.flush()
    print("writing", flush=True)
    time.sleep(120)

torch.save = slow_save
atomic_torch_save({"weights": torch.zeros(3)}, sys.argv[1])
"""


def test_checkpoint_killed_mid_write_is_absent_and_its_debris_cleared(tmp_path):
    out = tmp_path / "m.pt"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_WRITE, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait(timeout=60)
    debris = [p.name for p in tmp_path.iterdir()]
    assert not out.exists() and len(debris) == 1 and debris[0].startswith(".m.pt."), debris
    robench.checkpoints.atomic_torch_save({"weights": torch.ones(3)}, out)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]
    assert torch.equal(robench.checkpoints.read_checkpoint(out)["weights"], torch.ones(3))


@pytest.mark.slow
def test_ctrl_c_after_the_work_is_done_is_ignored(tmp_path):
    """A Ctrl-C while the interpreter tears down after a finished `train` is not a signal death.

    Regression: Python restored its own SIGINT handler after the command and the
    process died with -2 and no message although its checkpoint was complete.
    """
    for i in range(3):
        out = tmp_path / f"m{i}.pt"
        proc = spawn(TRAIN + ["--out", str(out)], tmp_path)
        while not out.exists() and proc.poll() is None:
            time.sleep(0.002)
        time.sleep(0.02 * i)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode in (0, 130), (proc.returncode, err)
        check_ctrl_c(proc.returncode, err)
        assert check_checkpoint(out)
