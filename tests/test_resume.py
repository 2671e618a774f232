"""Stop, resume, repeat, trust: SIGKILL and Ctrl-C mid-run, byte-identical reruns, cell keys, seeds."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from conftest import ctrl_c_deliverable
from robench.cli import cli

# Subprocesses get one torch thread, like the in-process runs below (see one_thread).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
from robench.schema import parquet_available  # noqa: E402

SAMPLES = "samples.parquet" if parquet_available() else "samples.csv"  # the run's per-sample records


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    """A six-cell grid on a one-epoch digits model given by path."""
    from robench.checkpoints import save_checkpoint
    from robench.training import TrainConfig, train

    folder = tmp_path_factory.mktemp("suite")
    cfg = TrainConfig(defense="softmax", dataset="digits", epochs=1, feature_dim=8, seed=0, device="cpu")
    ckpt = save_checkpoint(train(cfg, quiet=True), folder / "tiny.pt")
    path = folder / "suite.yaml"
    path.write_text(f"""\
dataset: digits
models: [{ckpt}]
attacks:
  - fgsm
  - {{name: pgd, steps: 3}}
  - {{name: bim, steps: 3}}
eps: [0.1, 0.2]
detectors: [max-softmax]
n: 20
batch_size: 10
seed: 0
device: cpu
""")
    return path


@pytest.fixture(scope="module")
def reference(suite, tmp_path_factory) -> Path:
    """The same suite run once, uninterrupted, in this process."""
    out = tmp_path_factory.mktemp("ref") / "run"
    result = CliRunner().invoke(cli, ["run", str(suite), "--out", str(out), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def start(suite: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "robench.cli", "run", str(suite), "--out", str(out), "-q"]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=ctrl_c_deliverable)


def finished_cells(out: Path) -> int:
    """Finished cell folders (pathlib's '*' also matches the hidden folders cells are staged in)."""
    return sum(1 for p in (out / "cells").glob("*/row.json") if not p.parent.name.startswith("."))


def wait_for_cells(proc: subprocess.Popen, out: Path, count: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while finished_cells(out) < count:
        assert proc.poll() is None, f"the run ended before it could be interrupted: {proc.stderr.read()}"
        assert time.time() < deadline, "no cell finished in time"
        time.sleep(0.02)


def test_same_command_twice_gives_identical_bytes(suite, reference, tmp_path):
    out = tmp_path / "again"
    result = CliRunner().invoke(cli, ["run", str(suite), "--out", str(out), "-q"], catch_exceptions=False)
    assert result.exit_code == 0
    for name in ("results.csv", SAMPLES, "sanity.csv"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seeds"] == {"seed": 0} and len(manifest["cell_seeds"]) == 6
    assert {"torch_threads", "cudnn_deterministic", "cell_seed"} <= set(manifest["determinism"])


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_matches_uninterrupted(suite, reference, tmp_path):
    out = tmp_path / "killed"
    proc = start(suite, out)
    wait_for_cells(proc, out, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = finished_cells(out)
    assert 2 <= kept < 6 and not (out / "results.csv").exists()

    rerun = subprocess.run([sys.executable, "-m", "robench.cli", "run", str(suite), "--out", str(out), "-q"],
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{6 - kept} cells run, {kept} cached" in rerun.stdout
    for name in ("results.csv", SAMPLES):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not [p for p in out.rglob(".*")], "temporary files left behind"


@pytest.mark.slow
def test_ctrl_c_exits_130_and_keeps_finished_cells(suite, tmp_path):
    # Long cells, so the signal lands while the grid is still running.
    slow = tmp_path / "slow.yaml"
    slow.write_text(suite.read_text().replace("steps: 3", "steps: 400"))
    out = tmp_path / "interrupted"
    proc = start(slow, out)
    wait_for_cells(proc, out, 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("Error: interrupted")
    assert "Traceback" not in stderr
    assert 1 <= finished_cells(out) < 6
    assert not list((out / "cells").glob(".*")), "a half-written cell was left behind"


def test_rerun_reuses_cells_and_cleans_leftovers(suite, reference, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    first = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    # What a killed run and an older configuration leave: a staged cell, a temp file, a stale cell.
    (out / "cells" / ".abc123.stage").mkdir()
    (out / ".results.csv.x1.tmp").write_text("partial")
    shutil.copytree(out / "cells" / next(iter(first)), out / "cells" / "0123456789abcdef")
    (out / "results.csv").unlink()

    result = CliRunner().invoke(cli, ["run", str(suite), "--out", str(out), "-q"], catch_exceptions=False)
    assert "0 cells run, 6 cached" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()} == first
    assert (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes()
    assert not list(out.glob(".*")) and not list((out / "cells").glob(".*"))


def test_global_rng_is_left_alone(suite, tmp_path):
    from robench.config import RunConfig
    from robench.runner import run_attack

    ckpt = str(suite.parent / "tiny.pt")
    cfg = RunConfig(models=[ckpt], attacks=["pgd:steps=3"], eps=[0.1], detectors=["max-softmax"],
                       n=10, batch_size=10, device="cpu", sanity=False)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        state = torch.random.get_rng_state()
        run_attack(cfg, str(tmp_path / "a"), quiet=True)
        assert torch.equal(torch.random.get_rng_state(), state)
        torch.manual_seed(2)  # another global state: the same numbers
        run_attack(cfg, str(tmp_path / "b"), quiet=True)
    assert (tmp_path / "a" / SAMPLES).read_bytes() == (tmp_path / "b" / SAMPLES).read_bytes()


def test_cell_keys_and_seeds(suite, monkeypatch):
    import robench.attacks
    from robench.config import RunConfig
    from robench.evaluate import run_job
    from robench.plan import plan_cells
    from robench.prepare import prepare_model

    ckpt = str(suite.parent / "tiny.pt")
    base = dict(models=[ckpt], attacks=["pgd:steps=3"], eps=[0.1], detectors=["max-softmax"], n=10,
                batch_size=10, device="cpu")
    cfg = RunConfig(**base)
    ctx = prepare_model(ckpt, cfg, torch.device("cpu"))
    ids = lambda **change: [c.cell_id for c in plan_cells(RunConfig(**{**base, **change}), ctx.plan_key())]
    assert ids() == ids()
    changed = [ids(attacks=["pgd:steps=4"]), ids(eps=[0.2]), ids(seed=1), ids(batch_size=5),
               ids(threats=["white-box"]), ids(arch="small-cnn")]
    assert len({i[0] for i in changed} | set(ids())) == len(changed) + 1
    # A different checkpoint (same path, other bytes) changes every key.
    other = plan_cells(cfg, type(ctx)(**{**ctx.__dict__, "sha256": "0" * 64}).plan_key())
    assert other[0].cell_id != ids()[0]

    seen = []
    original = robench.attacks.create_attack

    def spy(name, model, eps, **kwargs):
        seen.append(kwargs.get("seed"))
        return original(name, model, eps, **kwargs)

    monkeypatch.setattr(robench.attacks, "create_attack", spy)
    cell = plan_cells(cfg, ctx.plan_key())[0]
    x1 = run_job(cell, ctx, None, cfg, quiet=True).cells[0].x_adv  # each call: a cache of its own
    x2 = run_job(cell, ctx, None, cfg, quiet=True).cells[0].x_adv
    reseeded = type(cell)(**{**cell.__dict__, "seed": cell.seed + 1})
    x3 = run_job(reseeded, ctx, None, cfg, quiet=True).cells[0].x_adv
    assert seen == [cell.seed, cell.seed, cell.seed + 1]
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)  # the random start comes from the cell's seed
