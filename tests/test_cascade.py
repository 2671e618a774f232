"""``--cascade``: each further attack runs only on the points still robust (AutoAttack's cascade).

Same worst-case robust accuracy as the full grid at a fraction of the passes;
off by default and written into the manifest; a killed chain resumes to the
same files.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from robench.config import RunConfig
from robench.runner import run_attack

ATTACKS = ["fgsm", "bim:steps=5", "pgd:steps=5,restarts=2"]
from robench.schema import parquet_available  # noqa: E402

SAMPLES = "samples.parquet" if parquet_available() else "samples.csv"  # the run's per-sample records
from robench.rundir import RunDir  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from robench.checkpoints import save_checkpoint
    from robench.training import TrainConfig, train

    cfg = TrainConfig(defense="softmax", dataset="digits", epochs=2, feature_dim=8, seed=0, device="cpu")
    return str(save_checkpoint(train(cfg, quiet=True), tmp_path_factory.mktemp("ckpt") / "weak.pt"))


def grid(ckpt, **extra):
    return RunConfig(models=[ckpt], attacks=ATTACKS, eps=[0.1, 0.2], threats=["gray-box"],
                        detectors=["max-softmax"], n=80, batch_size=32, device="cpu", sanity=False, **extra)


@pytest.fixture(scope="module")
def runs(ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run_attack(grid(ckpt), str(root / "full"), quiet=True)
    run_attack(grid(ckpt, cascade=True), str(root / "cascade"), quiet=True)
    return root / "full", root / "cascade"


def worst_case(samples: pd.DataFrame) -> pd.Series:
    """Per eps: points correct when clean and never misclassified by any attack."""
    robust = (samples["clean_pred"] == samples["label"]) & (samples["adv_pred"] == samples["label"])
    return robust.groupby([samples["eps"], samples["index"]]).all().groupby(level=0).mean()


def test_cascade_reaches_the_full_grids_worst_case_with_half_the_passes(runs):
    full, cascade = (pd.read_csv(r / "results.csv") for r in runs)
    full_worst = worst_case(RunDir(runs[0]).samples())
    last = cascade[cascade["attack"] == "pgd"].set_index("eps")["robust_acc"]
    assert (full_worst < 0.5).all()  # the regime the cascade is for
    # Per eps, the cascade's last cell is the worst case over all three attacks; its
    # restarts keep the example that won a point, so it is never weaker.
    assert (last <= full_worst + 1e-12).all(), (last, full_worst)
    assert (full_worst - last <= 1 / 80 + 1e-12).all(), (last, full_worst)
    ratio = cascade["passes_per_sample"].sum() / full["passes_per_sample"].sum()
    assert ratio <= 0.5, ratio
    # The cascade's rows accumulate: robust accuracy never rises along the chain.
    for _, rows in cascade.groupby("eps"):
        accs = rows.set_index("attack").loc[["fgsm", "bim", "pgd"], "robust_acc"].to_numpy()
        assert (accs[1:] <= accs[:-1] + 1e-12).all(), accs
    assert set(cascade["cascade_after"].fillna("")) == {"", "fgsm", "fgsm;bim:steps=5"}
    assert full["cascade_after"].isna().all()


def test_cascade_is_off_by_default_and_in_the_manifest(runs):
    full, cascade = (json.loads((r / "manifest.json").read_text()) for r in runs)
    assert full["cascade"] is False and full["config"]["cascade"] is False
    assert cascade["cascade"] is True and cascade["config"]["cascade"] is True


def test_a_chain_missing_a_cell_resumes_to_the_same_files(ckpt, runs, tmp_path):
    import shutil

    run = tmp_path / "resumed"
    shutil.copytree(runs[1], run)
    last = pd.read_csv(run / "results.csv")
    cell = RunDir(run).samples().query("attack == 'pgd' and eps == 0.2")["cell_id"].iloc[0]
    shutil.rmtree(run / "cells" / cell)
    summary = run_attack(grid(ckpt, cascade=True), str(run), quiet=True).text()
    assert "1 cells run, 1 cached" in summary  # the one chain with a missing cell
    assert (run / "results.csv").read_bytes() == (runs[1] / "results.csv").read_bytes()
    assert (run / SAMPLES).read_bytes() == (runs[1] / SAMPLES).read_bytes()
    assert len(last[last["attack"] != "worst-case"]) == 6


def test_cascade_under_every_threat_model(ckpt, tmp_path):
    """White-box chains judge a point won when it is misclassified AND unflagged; black-box
    chains transfer only to points the target still classifies correctly."""
    cfg = RunConfig(models=[ckpt], attacks=["fgsm", "pgd:steps=4"], eps=[0.15], n=40, batch_size=20,
                       threats=["gray-box", "white-box", "black-box"], surrogate=ckpt,
                       detectors=["max-softmax"], device="cpu", sanity=False, cascade=True)
    run_attack(cfg, str(tmp_path / "run"), quiet=True)
    results = pd.read_csv(tmp_path / "run" / "results.csv")
    samples = RunDir(tmp_path / "run").samples()
    assert len(results[results["attack"] != "worst-case"]) == 6
    for threat, rows in results.groupby("threat"):
        first, last, worst = (rows[rows["attack"] == a].iloc[0] for a in ("fgsm", "pgd", "worst-case"))
        assert last["robust_acc"] <= first["robust_acc"] + 1e-12, threat
        assert worst["robust_acc"] == last["robust_acc"], threat  # a chain's last cell is its worst case
        assert last["cascade_after"] == "fgsm"
        # A point the first attack won is not attacked again: its example is carried over.
        won = samples[(samples["threat"] == threat) & (samples["attack"] == "fgsm")].set_index("index")
        kept = samples[(samples["threat"] == threat) & (samples["attack"] == "pgd")].set_index("index")
        done = won["success"] & (~won["flagged_fpr5"] if threat == "white-box" else True)
        assert (kept.loc[done[done].index, "adv_pred"] == won.loc[done[done].index, "adv_pred"]).all(), threat
