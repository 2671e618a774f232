"""robench.reports: a synthetic run directory in, every report file checked, the page rendered."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robench.errors import RobenchError
from robench.reports import build_report
from robench.results import ID_COLUMNS, RunDir, atomic_write_csv, make_cell_id

K = 10  # classes
N = 80  # attacked test points per cell
EVIL = "<script>alert('x')</script>"


# -- a synthetic run, written through the RunDir writers --------------------------------

def _class_means(dim: int) -> np.ndarray:
    angles = 2 * np.pi * np.arange(K) / K
    means = np.zeros((K, dim))
    means[:, 0], means[:, 1] = 6 * np.cos(angles), 6 * np.sin(angles)
    return means


def _features(rng, y: np.ndarray, dim: int) -> np.ndarray:
    return (_class_means(dim)[y] + rng.normal(size=(len(y), dim))).astype(np.float32)


def _cell(rng, model: str, dim: int, attack: str, eps: float, threat: str, detector: str, y, clean_pred):
    strength = eps * (1.5 if threat == "white-box" else 1.0) * (0.6 if model == "gm" else 1.0)
    wrong = (y + 1 + rng.integers(0, K - 1, N)) % K
    adv_pred = np.where(rng.random(N) < min(strength * 2.5, 0.95), wrong, clean_pred)
    has_det = detector != "none"
    clean_score = rng.normal(size=N) if has_det else np.full(N, np.nan)
    shift = 4 * eps + (1.0 if model == "gm" else 0.2)
    adv_score = rng.normal(loc=shift, size=N) if has_det else np.full(N, np.nan)
    success = (clean_pred == y) & (adv_pred != y)
    samples = pd.DataFrame({
        "index": np.arange(N), "input_sha1": [f"{i:012x}" for i in range(N)], "label": y,
        "clean_pred": clean_pred, "adv_pred": adv_pred, "clean_score": clean_score, "adv_score": adv_score,
        "linf": np.full(N, eps), "l2": np.full(N, eps * 5), "success": success,
        "flagged_fpr1": adv_score > 2.3, "flagged_fpr5": adv_score > 1.6,
    })
    ok = clean_pred == y
    row = {
        "model": model, "defense": model, "dataset": "digits", "arch": "small-cnn", "attack": attack,
        "attack_params": "steps=10" if attack == "pgd" else "", "norm": "linf", "eps": eps, "threat": threat,
        "objective": "worst-of:ce+margin" if threat == "white-box" else "ce", "detector": detector, "seed": 0,
        "clean_acc": ok.mean(), "robust_acc": (adv_pred == y).mean(), "n": N,
        "n_successful": int(success.sum()),
        "attack_success_rate": success.sum() / max(ok.sum(), 1), "passes_per_sample": 10.0,
        "objective_wins": "ce:30;margin:50" if threat == "white-box" else "",
    }
    if has_det:
        from sklearn.metrics import roc_auc_score

        scores = np.r_[clean_score[ok], adv_score[ok]]
        auc = roc_auc_score(np.r_[np.zeros(ok.sum()), np.ones(ok.sum())], scores)
        row.update(auc=auc, auc_lo=max(auc - 0.05, 0), auc_hi=min(auc + 0.05, 1))
    acc = row["robust_acc"]
    row.update(robust_acc_lo=max(acc - 0.08, 0), robust_acc_hi=min(acc + 0.08, 1))
    adv_f = _features(rng, adv_pred, dim) * 0.8 + _features(rng, y, dim) * 0.2
    x_adv = rng.random((N, 1, 8, 8)).astype(np.float32)
    return row, samples, adv_f, x_adv


def make_run(path: Path, seed: int = 0, sanity: bool = True, models=(("gm", 2), ("softmax", 16)),
             attacks=("fgsm", "pgd"), epsilons=(0.1, 0.3), threats=("gray-box", "white-box")) -> Path:
    """By default gm (2-D features) and softmax (16-D), fgsm and pgd, two eps, gray- and white-box."""
    rng = np.random.default_rng(seed)
    run = RunDir.create(path)
    run.write_manifest({"config": {"command": "attack", "note": EVIL}, "device": "cpu", "git": "abc123",
                        "seeds": {"seed": seed}, "start_time": "2024-01-01T00:00:00",
                        "end_time": "2024-01-01T00:01:00", "versions": {"robench": "0.1.0"}})
    for model, dim in models:
        y = rng.integers(0, K, N)
        clean_pred = np.where(rng.random(N) < 0.9, y, (y + 1) % K)
        run.write_features(model, _features(rng, y, dim), y, clean_pred, np.arange(N))
        for attack in attacks:
            for eps in epsilons:
                for threat in threats:
                    for detector in ("gm-likelihood", "none"):
                        row, samples, adv_f, x_adv = _cell(rng, model, dim, attack, eps, threat, detector,
                                                           y, clean_pred)
                        cell_id = make_cell_id(row)
                        run.write_cell(cell_id, row, samples, adv_f, x_adv)
                        run.write_timing(cell_id, 0.5)
    run.finalize()
    if sanity:
        atomic_write_csv(path / "sanity.csv", pd.DataFrame({
            "model": ["gm", "softmax"], "check": ["gradient masking", "clean accuracy"],
            "flagged": [True, False], "evidence": [EVIL, "acc 0.91 >= 0.5"]}))
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    run = make_run(base / "run")
    index = build_report([run], base / "out")
    return run, base / "out", index


# -- files ------------------------------------------------------------------------------

def _png_is_drawn(path: Path) -> bool:
    import matplotlib.image as mpimg

    img = (mpimg.imread(path)[..., :3] * 255).astype(np.uint32)
    packed = (img[..., 0] << 16) | (img[..., 1] << 8) | img[..., 2]
    return img.shape[0] > 100 and img.shape[1] > 100 and len(np.unique(packed)) > 10


def test_report_writes_every_file(report):
    run, out, index = report
    assert index == out / "index.html" and index.is_file()
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == len(RunDir(run).results()) == 2 * 2 * 2 * 2 * 2
    assert list(metrics.columns[:1 + len(ID_COLUMNS)]) == ["run", *ID_COLUMNS]
    for threat in ("gray-box", "white-box"):
        table = pd.read_csv(out / f"table_{threat}.csv")
        assert list(table.columns[:3]) == ["model", "detector", "clean acc"]
        assert len(table) == 4 and len(table.columns) == 3 + 4  # (fgsm, pgd) x (0.1, 0.3)
        assert (out / f"table_{threat}.md").read_text().count("\n|") >= 5
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert "robust_accuracy_vs_eps.png" in plots and "detection_auc_vs_eps.png" in plots
    assert {"features_gm.png", "features_softmax.png"} <= set(plots)
    assert sum(p.startswith("roc_") for p in plots) == 4  # (gm, softmax) x (gray, white) x gm-likelihood
    for name in plots:
        assert _png_is_drawn(out / "plots" / name), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left


def test_pivot_cells_are_robust_accuracy_and_auc(report):
    run, out, _ = report
    results = RunDir(run).results()
    table = pd.read_csv(out / "table_gray-box.csv", keep_default_na=False).set_index(["model", "detector"])
    row = results[(results["model"] == "gm") & (results["attack"] == "pgd") & (results["eps"] == 0.3)
                  & (results["threat"] == "gray-box") & (results["detector"] == "gm-likelihood")].iloc[0]
    assert table.loc[("gm", "gm-likelihood"), "pgd(steps=10) eps=0.3"] == \
        f"{row['robust_acc']:.2f} / {row['auc']:.2f}"
    assert table.loc[("gm", "none"), "fgsm eps=0.1"].endswith("/ \u2013")


def test_index_is_self_contained_and_escaped(report):
    _, out, index = report
    html = index.read_text()
    assert EVIL not in html and "&lt;script&gt;" in html
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == len(list((out / "plots").iterdir()))
    assert not re.search(r'(src|href)="https?://', html)
    assert "1 sanity check flagged" in html and "gradient masking" in html
    assert "raw 2-D features" in html and "PCA of 16-D features" in html
    assert "abc123" in html  # the manifest's git hash


def test_two_runs_with_the_same_folder_name(tmp_path):
    small = dict(sanity=False, models=(("gm", 2),), attacks=("pgd",), threats=("gray-box",))
    a = make_run(tmp_path / "a" / "run", seed=1, **small)
    b = make_run(tmp_path / "b" / "run", seed=2, **small)
    build_report([a, b], tmp_path / "out")
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert sorted(metrics["run"].unique()) == ["a/run", "b/run"]
    assert (tmp_path / "out" / "plots" / "features_a_run_gm.png").is_file()
    assert "sanity" not in (tmp_path / "out" / "index.html").read_text().lower().split("<main>")[1][:200]


def test_not_a_run_is_a_clear_error_and_writes_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobenchError, match="is not a robench run directory"):
        build_report([tmp_path / "empty"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failure_leaves_no_half_written_report(tmp_path, monkeypatch):
    import robench.reports.build as build

    run = make_run(tmp_path / "run", sanity=False, models=(("gm", 2),), attacks=("pgd",), epsilons=(0.3,),
                   threats=("gray-box",))

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(build, "all_plots", boom)
    with pytest.raises(RuntimeError):
        build_report([run], tmp_path / "new")
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        build_report([run], tmp_path / "kept")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["notes.txt"]


# -- headless Chromium ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (as root); a clear failure otherwise."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail("chromium is not installed and we are not root to apt-get install it; "
                    "install Debian's 'chromium' package to render the report")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                          capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, env=env, timeout=600)
        proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
                              capture_output=True, text=True, env=env, timeout=900)
    found = shutil.which("chromium")
    if proc.returncode != 0 or not found:
        pytest.fail(f"could not apt-get install chromium (exit {proc.returncode}): {proc.stderr[-800:]}")
    return found


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def test_index_renders_in_headless_chromium(report, chromium, tmp_path):
    from PIL import Image

    _, out, index = report
    url = index.resolve().as_uri()
    shot = tmp_path / "page.png"
    proc = _chromium(chromium, tmp_path / "profile-1", f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert shot.is_file(), f"no screenshot: {proc.stderr[-800:]}"
    shutil.copy(shot, out / "screenshot.png")  # kept next to the report for a human look
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    assert len(img.getcolors(maxcolors=1 << 20) or []) > 50  # text, tables and plots, not a blank page
    dom = _chromium(chromium, tmp_path / "profile-2", "--dump-dom", url).stdout
    assert "<table>" in dom and "robust accuracy / detection AUC" in dom
    for threat in ("gray-box", "white-box"):
        table = pd.read_csv(out / f"table_{threat}.csv", dtype=str, keep_default_na=False)
        for value in table.drop(columns=["model", "detector"]).to_numpy().ravel():
            assert value in dom
    assert EVIL not in dom
