"""robench.reports: a synthetic run directory in, every report file checked, the page rendered."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robench.errors import RobenchError
from robench.metrics import cell_metrics
from robench.reports import build_report
from robench.reports.runs import load_runs
from robench.results import ID_COLUMNS, RunDir, atomic_write_csv, make_cell_id, write_results
from robench.worstcase import WORST_CASE, worst_case_problems, worst_case_rows

K = 10  # classes
N = 80  # attacked test points per cell
EVIL = "<script>alert('x')</script>"
THRESHOLDS = {0.01: 2.3, 0.05: 1.6}  # the detector's: flagged when the score is above


# -- a synthetic run, written through the RunDir writers --------------------------------

def _class_means(dim: int) -> np.ndarray:
    angles = 2 * np.pi * np.arange(K) / K
    means = np.zeros((K, dim))
    means[:, 0], means[:, 1] = 6 * np.cos(angles), 6 * np.sin(angles)
    return means


def _features(rng, y: np.ndarray, dim: int) -> np.ndarray:
    return (_class_means(dim)[y] + rng.normal(size=(len(y), dim))).astype(np.float32)


def _cell(rng, model: str, dim: int, attack: str, eps: float, threat: str, detector: str, y, clean_pred):
    unbounded = eps == 0
    strength = (0.3 if unbounded else eps) * (1.5 if threat == "white-box" else 1.0) * (0.6 if model == "gm" else 1)
    wrong = (y + 1 + rng.integers(0, K - 1, N)) % K
    adv_pred = np.where(rng.random(N) < min(strength * 2.5, 0.95), wrong, clean_pred)
    has_det = detector != "none"
    clean_score = rng.normal(size=N) if has_det else np.full(N, np.nan)
    shift = 4 * eps + (1.0 if model == "gm" else 0.2)
    adv_score = rng.normal(loc=shift, size=N) if has_det else np.full(N, np.nan)
    linf = rng.uniform(0.05, 0.2, N) if unbounded else np.full(N, eps)
    l2 = rng.uniform(0.5, 1.5, N) if unbounded else np.full(N, eps * 5)
    samples = pd.DataFrame({
        "index": np.arange(N), "input_sha1": [f"{i:012x}" for i in range(N)], "label": y,
        "clean_pred": clean_pred, "adv_pred": adv_pred, "clean_score": clean_score, "adv_score": adv_score,
        "linf": linf, "l2": l2, "success": (clean_pred == y) & (adv_pred != y),
        "flagged_fpr1": adv_score > THRESHOLDS[0.01], "flagged_fpr5": adv_score > THRESHOLDS[0.05],
    })
    metrics = cell_metrics(y, clean_pred, adv_pred, clean_score if has_det else None,
                           adv_score if has_det else None, THRESHOLDS if has_det else None, linf=linf, l2=l2)
    row = {
        "model": model, "defense": model, "dataset": "digits", "arch": "small-cnn", "attack": attack,
        "attack_params": "steps=10" if attack == "pgd" else "", "norm": "L2" if unbounded else "linf",
        "eps": eps, "threat": threat, "objective": "worst-of:ce+margin" if threat == "white-box" else "ce",
        "detector": detector, "seed": 0, **metrics, "passes_per_sample": 10.0 if attack == "pgd" else 1.0,
        "objective_wins": "ce:30;margin:50" if threat == "white-box" else "",
    }
    adv_f = _features(rng, adv_pred, dim) * 0.8 + _features(rng, y, dim) * 0.2
    x_adv = rng.random((N, 1, 8, 8)).astype(np.float32)
    return row, samples, adv_f, x_adv


def make_run(path: Path, seed: int = 0, sanity: bool = True, models=(("gm", 2), ("softmax", 16)),
             attacks=("fgsm", "pgd"), epsilons=(0.1, 0.3), threats=("gray-box", "white-box"),
             unbounded: bool = False) -> Path:
    """By default gm (2-D features) and softmax (16-D), fgsm and pgd, two eps, gray- and white-box.

    ``unbounded`` adds cw-l2 at eps 0 (a minimal-perturbation attack) to every (model, threat, detector).
    """
    rng = np.random.default_rng(seed)
    run = RunDir.create(path)
    run.write_manifest({"config": {"command": "attack", "note": EVIL}, "device": "cpu", "git": "abc123",
                        "seeds": {"seed": seed}, "start_time": "2024-01-01T00:00:00",
                        "end_time": "2024-01-01T00:01:00", "versions": {"robench": "0.1.0"}})
    grid = [(a, e) for a in attacks for e in epsilons] + ([("cw-l2", 0.0)] if unbounded else [])
    for model, dim in models:
        y = rng.integers(0, K, N)
        clean_pred = np.where(rng.random(N) < 0.9, y, (y + 1) % K)
        run.write_features(model, _features(rng, y, dim), y, clean_pred, np.arange(N))
        for attack, eps in grid:
            for threat in threats:
                for detector in ("gm-likelihood", "none"):
                    row, samples, adv_f, x_adv = _cell(rng, model, dim, attack, eps, threat, detector, y,
                                                       clean_pred)
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
    run = make_run(base / "run", unbounded=True)
    index = build_report([run], base / "out")
    return run, base / "out", index


def _worst(metrics: pd.DataFrame, model="gm", threat="white-box", detector="gm-likelihood", eps=0.3) -> pd.Series:
    m = metrics[(metrics["attack"] == WORST_CASE) & (metrics["model"] == model) & (metrics["threat"] == threat)
                & (metrics["detector"].fillna("none") == detector) & (metrics["eps"] == eps)]
    assert len(m) == 1
    return m.iloc[0]


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
    cells = 2 * (2 * 2 + 1) * 2 * 2  # models x (attacks x eps + cw-l2) x threats x detectors
    worst = 2 * 2 * 2 * 2  # a worst case per model x eps x threat x detector, written by RunDir.finalize
    assert len(RunDir(run).results()) == cells + worst
    assert len(metrics) == cells + worst
    assert list(metrics.columns[:1 + len(ID_COLUMNS)]) == ["run", *ID_COLUMNS]
    for threat in ("gray-box", "white-box"):
        table = pd.read_csv(out / f"table_{threat}.csv")
        assert list(table.columns) == ["model", "detector", "attack", "budget", "robust acc [95% CI]",
                                       "det. robust acc @5% FPR", "AUC [95% CI]", "passes/point"]
        assert len(table) == 2 * 2 * (2 + 4 + 1)  # (model, detector) x (worst cases, attacks, cw-l2)
        assert (out / f"table_{threat}.md").read_text().count("\n|") >= len(table) + 1
        assert (out / f"table_{threat}.tex").read_text().count("\\\\") == len(table) + 1
    assert {"headline.csv", "headline.md", "leaderboard.csv", "leaderboard.html"} <= {p.name for p in out.iterdir()}
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert "robust_accuracy_vs_eps.png" in plots and "detection_vs_eps.png" in plots
    assert {"features_gm.png", "features_softmax.png"} <= set(plots)
    assert sum(p.startswith("roc_") for p in plots) == 4  # (gm, softmax) x (gray, white) x gm-likelihood
    for name in plots:
        assert _png_is_drawn(out / "plots" / name), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left


def test_metrics_gets_the_worst_case_of_every_budget(report):
    run, out, _ = report
    metrics = pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""])
    worst = metrics[metrics["attack"] == WORST_CASE]
    rundir = RunDir(run)
    expected = worst_case_rows(rundir.results(), rundir.samples(), cells=rundir.cells())
    assert len(worst) == len(expected) == 16 and set(worst["norm"]) == {"linf"}  # cw-l2 at eps 0: no budget
    assert set(worst["attack_params"]) == {"fgsm;pgd:steps=10"}
    assert worst_case_problems(metrics.drop(columns="run")) == []
    for _, row in worst.iterrows():
        members = metrics[(metrics["attack"].isin(["fgsm", "pgd"])) & (metrics["model"] == row["model"])
                          & (metrics["eps"] == row["eps"]) & (metrics["threat"] == row["threat"])
                          & (metrics["detector"] == row["detector"])]
        assert len(members) == 2 and row["robust_acc"] <= members["robust_acc"].min()
        assert row["passes_per_sample"] == 11.0


def test_threat_table_leads_with_the_worst_case(report):
    _, out, _ = report
    metrics = pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""])
    table = pd.read_csv(out / "table_white-box.csv", dtype=str, keep_default_na=False)
    block = table[(table["model"] == "gm") & (table["detector"] == "gm-likelihood")]
    assert block["attack"].tolist()[:2] == ["worst case of fgsm, pgd(steps=10)"] * 2
    assert block["budget"].tolist()[:2] == ["Linf 0.1", "Linf 0.3"]
    w = _worst(metrics)
    shown = block[block["budget"] == "Linf 0.3"].iloc[0]
    assert shown["robust acc [95% CI]"] == \
        f"{w['robust_acc']:.2f} [{w['robust_acc_lo']:.2f}, {w['robust_acc_hi']:.2f}]"
    assert shown["det. robust acc @5% FPR"] == f"{w['det_robust_acc_fpr5']:.2f}"
    assert shown["AUC [95% CI]"] == f"{w['auc']:.2f} [{w['auc_lo']:.2f}, {w['auc_hi']:.2f}]"
    last = block.iloc[-1]  # the unbounded attack closes the block, with its median perturbation
    cw = metrics[(metrics["attack"] == "cw-l2") & (metrics["model"] == "gm") & (metrics["threat"] == "white-box")
                 & (metrics["detector"] == "gm-likelihood")].iloc[0]
    assert last["attack"] == "cw-l2" and last["budget"] == f"unbounded (median L2 {cw['median_l2']:.3g})"
    assert not re.search(r"eps=0(?![.\d])", (out / "index.html").read_text())
    plain = table[(table["model"] == "gm") & (table["detector"] == "none")]
    assert set(plain["AUC [95% CI]"]) == {"\u2013"} and set(plain["det. robust acc @5% FPR"]) == {"\u2013"}


def _tabular(tex: str):
    """(column count, header cells, body rows) of a booktabs tabular; asserts its structure."""
    m = re.search(r"\\begin\{tabular\}\{([lrc]+)\}\n(.*)\\end\{tabular\}", tex, re.S)
    assert m, tex[:300]
    spec, body = m.groups()
    assert body.count("\\toprule") == body.count("\\midrule") == body.count("\\bottomrule") == 1
    head, rest = body.split("\\toprule")[1].split("\\midrule")
    lines = [head.strip()] + [x.strip() for x in rest.split("\\bottomrule")[0].strip().split("\n")]
    cells = []
    for line in lines:
        assert line.endswith("\\\\"), line
        cells.append([c.strip() for c in re.split(r"(?<!\\)&", line[:-2])])
        assert len(cells[-1]) == len(spec), line
        assert not re.search(r"(?<!\\)[_#%]", line), line  # text escaped
    return len(spec), cells[0], cells[1:]


def test_latex_table_parses_as_a_tabular_of_the_right_shape(report):
    _, out, _ = report
    table = pd.read_csv(out / "table_white-box.csv", dtype=str, keep_default_na=False)
    tex = (out / "table_white-box.tex").read_text()
    n_cols, header, rows = _tabular(tex)
    assert n_cols == len(table.columns) and len(rows) == len(table)
    assert header[4] == "robust acc" and header[5] == r"det.\ robust acc @5\% FPR"
    assert rows[0][2] == r"\textbf{worst case of fgsm, pgd(steps=10)}"
    metrics = pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""])
    w = _worst(metrics, eps=0.1)
    half = max(w["robust_acc"] - w["robust_acc_lo"], w["robust_acc_hi"] - w["robust_acc"])
    assert rows[0][4] == rf"\textbf{{{w['robust_acc']:.2f} $\pm$ {half:.2f}}}"
    assert "--" in rows[-1][5] or rows[-1][5].replace(".", "").isdigit()


def test_latex_escapes_text():
    from robench.reports.latex import escape, plus_minus

    assert escape("gm_v2 & 5% #1 {x} ~^\\") == \
        r"gm\_v2 \& 5\% \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{}"
    assert plus_minus(0.5, 0.4, 0.7) == r"0.50 $\pm$ 0.20" and plus_minus(0.5, None, None) == "0.50"
    assert plus_minus(float("nan"), 0, 1) == "--"


def test_headline_answers_the_question(report):
    """GM's worst-case robust accuracy at eps 0.3 under white-box with the detector at 5% FPR."""
    _, out, index = report
    metrics = pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""])
    top = pd.read_csv(out / "headline.csv", dtype=str, keep_default_na=False)
    assert list(top.columns[:4]) == ["model", "threat", "detector", "clean acc"]
    row = top[(top["model"] == "gm") & (top["threat"] == "white-box") & (top["detector"] == "gm-likelihood")]
    w = _worst(metrics)
    assert row["Linf 0.3: det. robust acc @5% FPR"].item() == f"{w['det_robust_acc_fpr5']:.2f}"
    assert row["Linf 0.3: robust acc"].item() == f"{w['robust_acc']:.2f}"
    assert len(top) == 2 * 2 * 2  # model x threat x detector
    html = index.read_text()
    assert html.index('id="headline"') < html.index('id="tables"') < html.index('id="plots-1"')


def test_index_is_self_contained_and_escaped(report):
    _, out, index = report
    html = index.read_text()
    assert EVIL not in html and "&lt;script&gt;" in html
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == len(list((out / "plots").iterdir()))
    assert not re.search(r'(src|href)="https?://', html)
    assert "1 sanity check flagged" in html and "gradient masking" in html
    assert "raw 2-D features" in html and "PCA of 16-D features" in html
    assert "abc123" in html  # the manifest's git hash
    assert 'id="run-1"' in html and 'href="leaderboard.html"' in html


def test_the_report_is_byte_stable(report, tmp_path):
    run, out, _ = report
    again = tmp_path / "again"
    build_report([run], again)
    for path in sorted(p for p in out.rglob("*") if p.is_file() and p.name != "screenshot.png"):
        twin = again / path.relative_to(out)
        if path.name == "index.html":  # the generation time is the one line allowed to differ
            strip = lambda p: re.sub(r"Generated [^<]* by", "", p.read_text())  # noqa: E731
            assert strip(path) == strip(twin)
        else:
            assert path.read_bytes() == twin.read_bytes(), path.name


def test_two_runs_with_the_same_folder_name(tmp_path):
    small = dict(sanity=False, models=(("gm", 2),), attacks=("pgd",), threats=("gray-box",))
    a = make_run(tmp_path / "a" / "run", seed=1, **small)
    b = make_run(tmp_path / "b" / "run", seed=2, **small)
    build_report([a, b], tmp_path / "out")
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv")
    assert sorted(metrics["run"].unique()) == ["a/run", "b/run"]
    assert (tmp_path / "out" / "plots" / "features_a_run_gm.png").is_file()
    assert "sanity" not in (tmp_path / "out" / "index.html").read_text().lower().split("<main>")[1][:200]
    top = pd.read_csv(tmp_path / "out" / "headline.csv")
    assert list(top.columns[:2]) == ["run", "model"] and sorted(top["run"].unique()) == ["a/run", "b/run"]


def test_a_run_without_samples_reports_each_attack_and_says_why(tmp_path):
    run = make_run(tmp_path / "run", sanity=False, models=(("gm", 2),), attacks=("fgsm", "pgd"), epsilons=(0.3,),
                   threats=("gray-box",))
    for name in ("samples.csv", "samples.parquet"):
        (run / name).unlink(missing_ok=True)
    shutil.rmtree(run / "cells")
    results = RunDir(run).results()  # a run from before results.csv had worst-case rows
    write_results(results[results["attack"] != WORST_CASE], run / "results.csv")
    build_report([run], tmp_path / "out")
    html = (tmp_path / "out" / "index.html").read_text()
    assert "no worst case over the attacks (no per-sample records" in html and 'id="headline"' not in html
    assert len(pd.read_csv(tmp_path / "out" / "table_gray-box.csv")) == 2 * 2  # detectors x attacks


def test_worst_case_rows_in_results_are_used_as_they_are(tmp_path):
    run = make_run(tmp_path / "run", sanity=False, models=(("gm", 2),), attacks=("fgsm", "pgd"), epsilons=(0.3,),
                   threats=("gray-box",))
    rundir = RunDir(run)
    results = rundir.results()
    worst = worst_case_rows(results, rundir.samples(), cells=rundir.cells()).assign(robust_acc=0.0123)
    atomic_write_csv(run / "results.csv", pd.concat([results, worst], ignore_index=True))
    metrics = load_runs([run])[0].metrics
    assert (metrics.loc[metrics["attack"] == WORST_CASE, "robust_acc"] == 0.0123).sum() == 2  # not recomputed
    assert len(metrics) == len(results) + 2


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


# -- a real run ----------------------------------------------------------------------------

def test_a_real_run_reports_its_worst_case(tmp_path):
    """A digits GM model trained for 2 epochs, attacked by FGSM and PGD under gray- and white-box."""
    import torch

    from robench.checkpoints import save_checkpoint
    from robench.config import RunConfig
    from robench.runner import run_attack
    from robench.training import TrainConfig, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train(TrainConfig(defense="gm", dataset="digits", epochs=2, feature_dim=8, seed=0, device="cpu"),
                      quiet=True)
        ckpt = str(save_checkpoint(model, tmp_path / "gm.pt"))
        cfg = RunConfig(models=[ckpt], attacks=["fgsm", "pgd:steps=5"], eps=[0.1, 0.2],
                        threats=["gray-box", "white-box"], detectors=["gm-likelihood"], n=40, batch_size=40,
                        device="cpu", sanity=False)
        run_attack(cfg, str(tmp_path / "run"), quiet=True)
    finally:
        torch.set_num_threads(threads)
    build_report([tmp_path / "run"], tmp_path / "out")
    samples = RunDir(tmp_path / "run").samples()
    metrics = pd.read_csv(tmp_path / "out" / "metrics.csv", keep_default_na=False, na_values=[""])
    worst = metrics[metrics["attack"] == WORST_CASE]
    assert len(worst) == 2 * 2  # eps x threat
    right = samples["adv_pred"] == samples["label"]
    for _, w in worst.iterrows():
        cells = (samples["eps"] == w["eps"]) & (samples["threat"] == w["threat"])
        assert w["robust_acc"] == pytest.approx(right[cells].groupby(samples["index"][cells]).all().mean())
        kept = (right | samples["flagged_fpr5"])[cells].groupby(samples["index"][cells]).all().mean()
        assert w["det_robust_acc_fpr5"] == pytest.approx(kept)
    assert worst_case_problems(metrics.drop(columns="run")) == []
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert len(board) == 2 and set(board["threat"]) == {"gray-box", "white-box"}
    for _, row in board.iterrows():
        w = worst[(worst["eps"] == 0.2) & (worst["threat"] == row["threat"])].iloc[0]
        assert row["robust_acc Linf 0.2"] == w["robust_acc"] and row["clean_acc"] == w["clean_acc"]


# -- headless Chromium ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium (``apt-get install chromium``); the rendering tests are skipped without it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("chromium is not installed (apt-get install chromium) to render the report")
    return found


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def test_index_renders_in_headless_chromium(report, chromium, tmp_path):
    from PIL import Image

    _, out, index = report
    url = index.resolve().as_uri()
    shot = tmp_path / "page.png"
    proc = run_chromium(chromium, tmp_path / "profile-1", f"--screenshot={shot}", "--window-size=1280,800", url)
    assert shot.is_file(), f"no screenshot: {proc.stderr[-800:]}"
    shutil.copy(shot, out / "screenshot.png")  # kept next to the report for a human look
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 800)
    assert len(img.getcolors(maxcolors=1 << 20) or []) > 50  # text and tables, not a blank page
    dom = run_chromium(chromium, tmp_path / "profile-2", "--dump-dom", url).stdout
    assert "<table>" in dom and "Headline: worst case over the run" in dom
    for name in ("table_gray-box.csv", "table_white-box.csv", "headline.csv"):
        table = pd.read_csv(out / name, dtype=str, keep_default_na=False)
        for value in table.to_numpy().ravel():
            assert value in dom
    assert EVIL not in dom


def test_the_headline_is_on_the_first_screen(report, chromium, tmp_path):
    """At 1280x800 the whole headline table is visible without scrolling, in either direction."""
    _, out, index = report
    probe = tmp_path / "probe.html"  # the page itself, plus a script that measures it
    measure = ("<script>window.addEventListener('load', function () {"
               "var t = document.querySelector('#headline table').getBoundingClientRect();"
               "var s = document.querySelector('#headline .scroll');"
               "document.body.setAttribute('data-probe', JSON.stringify({bottom: t.bottom, right: t.right,"
               "overflow: s.scrollWidth - s.clientWidth, width: window.innerWidth,"
               "height: window.innerHeight}));});</script>")
    probe.write_text(index.read_text().replace("</body>", measure + "</body>"))
    dom = run_chromium(chromium, tmp_path / "profile", "--window-size=1280,800", "--dump-dom",
                       probe.resolve().as_uri()).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, dom[-500:]
    box = json.loads(found.group(1).replace("&quot;", '"'))
    assert box["bottom"] <= box["height"] and box["right"] <= box["width"] and box["overflow"] <= 0, box
