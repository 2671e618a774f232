"""``robench verify`` through the CLI: cells in a run directory beside attack cells, the gap, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from robench.cli import cli
from robench.rundir import RunDir

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py
pytest.importorskip("highspy")


@pytest.fixture(scope="module")
def mlp(tmp_path_factory) -> str:
    """A GM MLP on digits (64-32-16 features): small enough that exact verification takes seconds."""
    from robench.checkpoints import save_checkpoint
    from robench.training import TrainConfig, train

    cfg = TrainConfig(defense="gm", dataset="digits", arch="mlp", epochs=4, feature_dim=16, seed=0, device="cpu")
    return str(save_checkpoint(train(cfg, quiet=True), tmp_path_factory.mktemp("mlp") / "mlp.pt"))


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_verify_then_attack_in_one_run_gives_the_interval(mlp, tmp_path):
    out = tmp_path / "run"
    verify = ["verify", "--model", mlp, "--eps", "0.04", "--n", "12", "--time-limit", "20", "--out", out, "-q"]
    result = invoke(*verify)
    assert result.exit_code == 0, result.output
    run = RunDir(out)
    rows = run.results()
    assert sorted(rows["detector"]) == ["gm-likelihood", "none"] and set(rows["attack"]) == {"verify"}
    plain = rows[rows["detector"] == "none"].iloc[0]
    assert plain["n_robust"] + plain["n_not_robust"] + plain["n_unknown"] + plain["n_rejected"] == 12
    result = invoke("attack", "--model", mlp, "--attack", "pgd:steps=20", "--eps", "0.04", "--threat", "white-box",
                    "--n", "12", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    rows = RunDir(out).results()
    assert (rows["attack"] == "verify").sum() == 2  # the attack run kept the verify cells
    worst = rows[rows["attack"] == "worst-case"].iloc[0]
    # Verification is a lower bound, the attacks an upper bound; "missed" counts what lies between.
    assert worst["exact_robust_acc"] <= worst["robust_acc"] + 1e-12
    assert worst["missed"] == pytest.approx(12 * (worst["robust_acc"] - worst["exact_robust_acc"]), abs=float(plain["n_unknown"]))
    assert worst["contradicted"] == 0
    assert worst["exact_det_robust_acc_fpr5"] <= worst["det_robust_acc_fpr5"] + 1e-12
    sanity = RunDir(out).sanity()
    assert "attacks miss no point verification proves breakable" in set(sanity["check"])
    # A second verify reuses its cells and leaves the attack cells alone.
    again = invoke(*verify)
    assert "0 cells run, 2 cached" in again.output and (RunDir(out).results()["attack"] == "pgd").any()
    # Another method goes beside exact (no --force): the worst case gets the certified bound too.
    crown = invoke("verify", "--model", mlp, "--eps", "0.04", "--n", "12", "--method", "crown", "--detector", "none",
                   "--out", out, "-q")
    assert crown.exit_code == 0, crown.output
    rows = RunDir(out).results()
    assert sorted(rows.loc[rows["attack"] == "verify", "objective"]) == ["crown", "exact", "exact"]
    worst = rows[rows["attack"] == "worst-case"].iloc[0]
    assert worst["certified_robust_acc"] <= worst["exact_robust_acc"] + 1e-12  # certified is sound


def test_a_not_robust_point_has_a_counterexample_that_fools_the_model(mlp, tmp_path):
    import torch

    from robench.checkpoints import load_model

    out = tmp_path / "run"
    assert invoke("verify", "--model", mlp, "--eps", "0.1", "--n", "10", "--detector", "none",
                  "--time-limit", "20", "--out", out, "-q").exit_code == 0
    run = RunDir(out)
    (cell,) = run.cell_ids()
    samples, x_adv = run.samples(cell), run.x_adv(cell)
    broken = samples["verify_status"] == "not-robust"
    assert broken.any()
    model = load_model(mlp)
    with torch.no_grad():
        pred = model(torch.from_numpy(x_adv)).argmax(1).numpy()
    assert (pred[broken.to_numpy()] != samples["label"].to_numpy()[broken.to_numpy()]).all()
    assert (samples.loc[broken, "linf"] <= 0.1 + 1e-6).all()


@pytest.mark.parametrize("args, needle", [
    (["--eps", "0"], "--eps must be a number in (0, 1]"),
    (["--eps", "0.1", "--n", "0"], "--n must be an integer >= 1"),
    (["--eps", "0.1", "--time-limit", "-1"], "--time-limit must be a number > 0"),
    (["--eps", "0.1", "--method", "exactly"], "Invalid value for '--method'"),
    (["--eps", "0.1", "--solver-workers", "0"], "--solver-workers must be an integer >= 1"),
])
def test_bad_verify_options_are_one_line(mlp, tmp_path, args, needle):
    result = CliRunner().invoke(cli, ["verify", "--model", mlp, *args, "--out", str(tmp_path / "run")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.output
    assert not (tmp_path / "run").exists()


def test_a_missing_solver_says_how_to_install_it(mlp, tmp_path, monkeypatch):
    import sys

    for name in ("highspy", "pyscipopt"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it fails
    result = CliRunner().invoke(cli, ["verify", "--model", mlp, "--eps", "0.1", "--n", "2",
                                      "--out", str(tmp_path / "run")])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and "pip install" in lines[0] and "[verify]" in lines[0], lines
    assert not Path(tmp_path / "run" / "results.csv").exists()


def test_json_output_is_parseable_even_with_the_solvers_banner(mlp, tmp_path):
    """HiGHS prints a banner on the process's stdout (file descriptor 1) at its first use."""
    import json
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "robench.cli", "verify", "--model", mlp, "--eps", "0.05", "--n", "3",
           "--detector", "none", "--time-limit", "10", "--out", str(tmp_path / "run"), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["cells_run"] == 1 and summary["results"][0]["attack"] == "verify"
