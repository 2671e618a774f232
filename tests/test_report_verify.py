"""The report's Verification section: verify rows out of the attack tables, bounds beside the worst case.

A synthetic run (attack and verify cells written through the RunDir writers, the
truth known by construction) checks every number against results.csv and the
masks it was made from; a real run (a GM ``mlp`` on digits, ``robench verify``
then ``robench attack`` into one --out) checks the same end to end.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_reports import _png_is_drawn, _tabular  # the report tests' PNG and booktabs checks

from robench.metrics import cell_metrics
from robench.reports import build_report
from robench.results import RunDir, make_cell_id
from robench.worstcase import WORST_CASE

K, N = 10, 40
EPS = (0.05, 0.1)
THRESHOLDS = {0.01: 2.3, 0.05: 1.6}
ATTACKS = ("fgsm", "pgd")
THREATS = ("gray-box", "white-box")
DETECTORS = ("gm-likelihood", "none")
READ = dict(keep_default_na=False, na_values=[""])


# -- a synthetic run whose truth is known ------------------------------------------------------

def _truth(seed: int = 0):
    """Labels, clean predictions and, per eps, the points verification proves breakable (nested in eps)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, N)
    clean_pred = y.copy()
    clean_pred[:4] = (y[:4] + 1) % K  # misclassified already: not robust at any eps
    u = rng.random(N)
    breakable = {eps: (clean_pred != y) | (u < p) for eps, p in zip(EPS, (0.3, 0.6))}
    return rng, y, clean_pred, breakable


def _attack_cell(rng, model, attack, eps, threat, detector, y, clean_pred, breakable, contradict):
    """An attack that finds some of the breakable points (white-box more), flagging some with the detector."""
    reach = (0.55 if attack == "fgsm" else 0.8) + (0.1 if threat == "white-box" else 0.0)
    won = (clean_pred != y) | (breakable & (rng.random(N) < reach))
    if contradict:  # an attack success on a point verification proves robust: a bug somewhere
        won[np.flatnonzero(~breakable)[0]] = True
    adv_pred = np.where(won, (y + 1 + rng.integers(0, K - 1, N)) % K, y)
    adv_pred = np.where(clean_pred != y, clean_pred, adv_pred)
    has_det = detector != "none"
    clean_score = rng.normal(size=N) if has_det else np.full(N, np.nan)
    adv_score = np.where(won, rng.normal(1.2, 1.0, N), rng.normal(size=N)) if has_det else np.full(N, np.nan)
    linf, l2 = np.full(N, eps), np.full(N, eps * 5)
    samples = pd.DataFrame({
        "index": np.arange(N), "input_sha1": [f"{i:012x}" for i in range(N)], "label": y,
        "clean_pred": clean_pred, "adv_pred": adv_pred, "clean_score": clean_score, "adv_score": adv_score,
        "linf": linf, "l2": l2, "success": (clean_pred == y) & (adv_pred != y),
        "flagged_fpr1": adv_score > THRESHOLDS[0.01], "flagged_fpr5": adv_score > THRESHOLDS[0.05]})
    metrics = cell_metrics(y, clean_pred, adv_pred, clean_score if has_det else None,
                           adv_score if has_det else None, THRESHOLDS if has_det else None, linf=linf, l2=l2)
    row = {"model": model, "defense": "gm", "dataset": "digits", "arch": "mlp", "attack": attack,
           "attack_params": "steps=10" if attack == "pgd" else "", "norm": "linf", "eps": eps, "threat": threat,
           "objective": "ce", "detector": detector, "seed": 0, **metrics, "passes_per_sample": 1.0}
    return row, samples


def _verify_cell(model, eps, method, detector, y, clean_pred, status):
    """A verify cell as robench verify writes it: per point robust / not-robust / unknown."""
    robust = status == "robust"
    wrong = (y + 1) % K
    samples = pd.DataFrame({
        "index": np.arange(N), "input_sha1": [f"{i:012x}" for i in range(N)], "label": y,
        "clean_pred": clean_pred, "adv_pred": np.where(status == "not-robust", wrong, clean_pred),
        "clean_score": np.nan, "adv_score": np.nan, "linf": eps, "l2": eps * 5,
        "success": status == "not-robust", "flagged_fpr1": False, "flagged_fpr5": False,
        "verify_status": status, "margin_lower": np.where(robust, 0.5, -0.5),
        "margin_upper": np.where(status == "not-robust", -0.1, 1.0)})
    value = "robust_acc" if detector == "none" else "det_robust_acc_fpr5"
    row = {"model": model, "defense": "gm", "dataset": "digits", "arch": "mlp", "attack": "verify",
           "attack_params": f"method={method}" + (",time_limit=60" if method == "exact" else ""), "norm": "Linf",
           "eps": eps, "threat": "white-box", "objective": method, "detector": detector, "seed": 0, "n": N,
           "clean_acc": float((clean_pred == y).mean()), value: float(robust.mean()),
           "n_robust": int(robust.sum()), "n_not_robust": int((status == "not-robust").sum()),
           "n_unknown": int((status == "unknown").sum()), "n_rejected": 0,
           "verify_median_seconds": 1.25 if method == "exact" else 0.01, "verify_max_seconds": 4.5}
    return row, samples


def _new_run(path: Path) -> RunDir:
    run = RunDir.create(path)
    run.write_manifest({"config": {"command": "attack"}, "device": "cpu"})
    return run


def make_verified_run(path: Path, seed: int = 0) -> dict:
    """Model ``gm``: fgsm and pgd at two eps, gray- and white-box, with and without the detector; exact
    verification (plain and detection-aware) and crown at both eps; at eps 0.1 two points left unknown
    and one white-box pgd success on a point proven robust."""
    rng, y, clean_pred, breakable = _truth(seed)
    run = _new_run(path)
    run.write_features("gm", rng.normal(size=(N, 2)).astype(np.float32), y, clean_pred, np.arange(N))
    status = {}
    for eps in EPS:
        beaten = np.zeros(N, dtype=bool)  # misclassified and unflagged by some attack on the detector
        for attack in ATTACKS:
            for threat in THREATS:
                for det in DETECTORS:
                    bug = eps == 0.1 and attack == "pgd" and threat == "white-box" and det == "none"
                    row, samples = _attack_cell(rng, "gm", attack, eps, threat, det, y, clean_pred,
                                                breakable[eps], bug)
                    run.write_cell(make_cell_id(row), row, samples, None, None, seconds=0.1)
                    if det != "none":
                        beaten |= ((samples["adv_pred"] != y) & ~samples["flagged_fpr5"]).to_numpy()
        st = np.where(breakable[eps], "not-robust", "robust").astype(object)
        if eps == 0.1:
            st[np.flatnonzero(~breakable[eps])[-2:]] = "unknown"
        status[eps] = st
        det_st = st.copy()  # breakable, but every attack that won them was flagged: detection-aware robust
        det_st[np.flatnonzero(breakable[eps] & (clean_pred == y) & ~beaten)[:3]] = "robust"
        crown = np.where((st == "robust") & (np.arange(N) % 3 != 0), "robust",
                         np.where(clean_pred != y, "not-robust", "unknown")).astype(object)
        for method, det, s in (("exact", "none", st), ("exact", "gm-likelihood", det_st), ("crown", "none", crown)):
            row, samples = _verify_cell("gm", eps, method, det, y, clean_pred, s)
            run.write_cell(make_cell_id(row), row, samples, None, None, seconds=1.0)
    run.finalize()
    return {"status": status, "y": y}


@pytest.fixture(scope="module")
def verified(tmp_path_factory):
    base = tmp_path_factory.mktemp("verified")
    truth = make_verified_run(base / "run")
    index = build_report([base / "run"], base / "out")
    return base / "run", base / "out", index, truth


def _results(run: Path) -> pd.DataFrame:
    return RunDir(run).results()


# -- the synthetic run ---------------------------------------------------------------------------

def test_verify_rows_are_not_attacks(verified):
    run, out, _, _ = verified
    assert (_results(run)["attack"] == "verify").sum() == 2 * 3
    for threat in THREATS:
        table = pd.read_csv(out / f"table_{threat}.csv", dtype=str, keep_default_na=False)
        assert not table["attack"].str.contains("verify").any()
        assert len(table) == 2 * (2 + 2 * 2)  # detectors x (worst cases + attacks x eps)
    assert not list(out.glob("table_*verify*"))
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == len(THREATS) * len(DETECTORS)  # no row made of verify cells alone
    assert not any("verify" in c for c in board.columns)
    headline = pd.read_csv(out / "headline.csv", dtype=str)
    assert len(headline) == len(THREATS) * len(DETECTORS)
    metrics = pd.read_csv(out / "metrics.csv", **READ)
    assert (metrics["attack"] == "verify").sum() == 6  # metrics.csv keeps every row


def test_verification_csv_equals_results(verified):
    run, out, _, truth = verified
    results = _results(run)
    frame = pd.read_csv(out / "verification.csv", **READ)
    # per eps: robust acc x (threat x detector) + det. robust acc x threat
    assert len(frame) == len(EPS) * (len(THREATS) * len(DETECTORS) + len(THREATS))
    verify = results[results["attack"] == "verify"]
    worst = results[results["attack"] == WORST_CASE]
    for _, r in frame.iterrows():
        plain = r["question"] == "robust_acc"
        det = "none" if plain else "gm-likelihood"
        v = verify[np.isclose(verify["eps"], r["eps"]) & (verify["detector"] == det)]
        exact = v[v["objective"] == "exact"].iloc[0]
        assert r["exact"] == exact[r["question"]] and r["exact_unknown"] == exact["n_unknown"]
        assert r["exact_median_seconds"] == exact["verify_median_seconds"] == 1.25
        crown = v[v["objective"] == "crown"]
        assert (r["certified"] == crown.iloc[0]["robust_acc"]) if len(crown) else math.isnan(r["certified"])
        assert r["lower_bound"] == max(r["exact"], 0 if math.isnan(r["certified"]) else r["certified"])
        w = worst[np.isclose(worst["eps"], r["eps"]) & (worst["threat"] == r["threat"])
                  & (worst["detector"] == r["detector"])].iloc[0]
        suffix = "" if plain else "_det_fpr5"
        assert r["upper_bound"] == w[r["question"]]
        assert r["missed"] == w["missed" + suffix] and r["contradicted"] == w["contradicted" + suffix]
        assert r["exact"] == w["exact_robust_acc" if plain else "exact_det_robust_acc_fpr5"]
        if plain:
            assert r["certified"] == w["certified_robust_acc"]
    # the truth by construction: exact is the fraction proven robust, unknowns counted as not robust
    for eps in EPS:
        plain = frame[(frame["eps"] == eps) & (frame["question"] == "robust_acc")]
        assert set(plain["exact"]) == {float((truth["status"][eps] == "robust").mean())}
        assert set(plain["exact_unknown"]) == {2 if eps == 0.1 else 0}


def test_missed_points_are_the_breakable_ones_no_attack_found(verified):
    run, out, _, truth = verified
    samples = RunDir(run).samples()
    frame = pd.read_csv(out / "verification.csv", **READ)
    plain = frame[frame["question"] == "robust_acc"]
    for _, r in plain.iterrows():
        cells = samples[(samples["attack"].isin(ATTACKS)) & np.isclose(samples["eps"], r["eps"])
                        & (samples["threat"] == r["threat"]) & (samples["detector"] == r["detector"])]
        won = (cells["adv_pred"] != cells["label"]).groupby(cells["index"]).any().sort_index().to_numpy()
        status = truth["status"][r["eps"]]
        assert r["missed"] == int(((status == "not-robust") & ~won).sum())
        assert r["contradicted"] == int(((status == "robust") & won).sum())
        assert r["exact"] <= r["upper_bound"] + 1e-12 or r["contradicted"] > 0
    assert plain["missed"].sum() > 0  # the synthetic attacks are built to miss some
    assert (plain["flagged"] == ((plain["missed"] > 0) | (plain["contradicted"] > 0))).all()
    # detection-aware, a gray-box attack ignores the detector: missing what verification breaks is no alarm
    det = frame[frame["question"] == "det_robust_acc_fpr5"]
    assert (det["flagged"] == (((det["missed"] > 0) & (det["threat"] == "white-box"))
                               | (det["contradicted"] > 0))).all()
    assert ((det["threat"] == "gray-box") & (det["missed"] > 0) & ~det["flagged"]).any()
    bug = plain[(plain["eps"] == 0.1) & (plain["threat"] == "white-box") & (plain["detector"] == "none")]
    assert bug["contradicted"].item() == 1 and bug["flagged"].item()


def test_the_page_shows_the_section_and_its_alarms(verified):
    _, out, index, _ = verified
    html = index.read_text()
    assert html.index('id="headline"') < html.index('id="verification"') < html.index('id="tables"')
    assert 'href="#verification"' in html and "The truth lies between the bounds" in html
    frame = pd.read_csv(out / "verification.csv", **READ)
    flagged = frame[frame["flagged"]]
    assert len(flagged) and html.count('<tr class="flagged">') == len(flagged)
    top = html.split('id="headline"')[0]  # before the headline: the red banner
    assert "Verification contradicts the attacks" in top and "proven breakable that every attack missed" in top
    assert "attack success(es) on points proven robust" in top
    md = (out / "verification.md").read_text().splitlines()  # title, blank, header, rule, rows
    r = frame.iloc[0]
    cells = [c.strip() for c in md[4].strip().strip("|").split("|")]
    assert cells[:5] == ["gm", "Linf 0.05", "robust acc", "gray-box", "gm-likelihood"]
    assert cells[5:9] == [f"{r['upper_bound']:.3f}", f"{r['exact']:.3f}", f"{r['certified']:.3f} (crown)",
                          f"[{r['lower_bound']:.3f}, {r['upper_bound']:.3f}]"]
    for cell in cells:
        assert f">{cell}<" in html.replace("&lt;", "<").replace("&gt;", ">"), cell


def test_verification_tex_is_a_booktabs_tabular(verified):
    _, out, _, _ = verified
    frame = pd.read_csv(out / "verification.csv", **READ)
    tex = (out / "verification.tex").read_text()
    n_cols, header, rows = _tabular(tex)
    assert n_cols == 5 + 9 and len(rows) == len(frame)
    assert "\\begin{tabular}{lllllrrrrrrrrr}" in tex  # text left, numbers right
    assert header[:3] == ["model", "budget", "question"] and header[8] == "truth in"
    assert rows[0][6] == f"{frame['exact'].iloc[0]:.3f}"
    det = [r for r in rows if r[2].startswith(r"det.") or r[2].startswith(r"\textbf{det.")]
    assert det and all(r"@5\% FPR" in r[2] for r in det)
    bold = [r for r in rows if r[0].startswith(r"\textbf{")]
    assert len(bold) == int(frame["flagged"].sum())


def test_leaderboard_gets_the_verified_bounds(verified):
    run, out, _, _ = verified
    board = pd.read_csv(out / "leaderboard.csv")
    worst = _results(run)
    worst = worst[worst["attack"] == WORST_CASE]
    for eps in EPS:
        for col in ("exact_robust_acc", "certified_robust_acc", "exact_det_robust_acc_fpr5"):
            assert f"{col} Linf {eps:g}" in board.columns
        for _, row in board.iterrows():
            w = worst[np.isclose(worst["eps"], eps) & (worst["threat"] == row["threat"])
                      & (worst["detector"] == row["detector"])].iloc[0]
            assert row[f"exact_robust_acc Linf {eps:g}"] == w["exact_robust_acc"]
            assert row[f"certified_robust_acc Linf {eps:g}"] == w["certified_robust_acc"]
            det = row[f"exact_det_robust_acc_fpr5 Linf {eps:g}"]
            assert (det == w["exact_det_robust_acc_fpr5"]) if row["detector"] != "none" else math.isnan(det)
    html = (out / "leaderboard.html").read_text()
    assert "exact robust acc" in html and "worst case and verified bounds, Linf eps 0.05" in html


def test_the_plot_is_drawn_and_the_sanity_check_agrees(verified):
    from robench.sanity import verification_checks

    run, out, index, _ = verified
    png = out / "plots" / "verification_vs_eps.png"
    assert _png_is_drawn(png)
    html = index.read_text()
    section = html.split('id="verification"')[1].split("</section>")[0]
    assert section.count('<img src="data:image/png;base64,') == 1 and "verification_vs_eps.png" in section
    check = [r for r in verification_checks(_results(run)) if r["check"].startswith("attacks miss no point")]
    assert len(check) == 1 and check[0]["flagged"]  # the sanity report flags what the section shows


def test_a_verify_only_run_has_the_section_and_no_attack_tables(tmp_path):
    _, y, clean_pred, breakable = _truth()
    run = _new_run(tmp_path / "run")
    status = np.where(breakable[0.05], "not-robust", "robust").astype(object)
    row, samples = _verify_cell("gm", 0.05, "exact", "none", y, clean_pred, status)
    run.write_cell(make_cell_id(row), row, samples, None, None, seconds=1.0)
    run.finalize()
    index = build_report([tmp_path / "run"], tmp_path / "out")
    frame = pd.read_csv(tmp_path / "out" / "verification.csv", **READ)
    assert len(frame) == 1 and math.isnan(frame["upper_bound"].item()) and frame["threat"].fillna("").item() == ""
    assert frame["exact"].item() == float((status == "robust").mean()) and not frame["flagged"].item()
    html = index.read_text()
    assert f"\u2265 {frame['exact'].item():.3f}" in html and 'id="headline"' not in html
    assert "No results rows." in html and not list((tmp_path / "out").glob("table_*"))
    assert pd.read_csv(tmp_path / "out" / "leaderboard.csv").empty
    assert "Verification contradicts" not in html


def test_an_attack_only_report_has_no_verification(tmp_path):
    rng, y, clean_pred, breakable = _truth()
    run = _new_run(tmp_path / "run")
    for attack in ATTACKS:
        row, samples = _attack_cell(rng, "gm", attack, 0.05, "gray-box", "none", y, clean_pred, breakable[0.05],
                                    False)
        run.write_cell(make_cell_id(row), row, samples, None, None)
    run.finalize()
    index = build_report([tmp_path / "run"], tmp_path / "out")
    assert not (tmp_path / "out" / "verification.csv").exists()
    assert 'id="verification"' not in index.read_text()
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert not any(c.startswith(("exact", "certified")) for c in board.columns)


# -- a real run ------------------------------------------------------------------------------------

@pytest.mark.usefixtures("one_thread")
def test_a_real_verify_and_attack_run_reports_its_interval(tmp_path):
    """A GM mlp on digits: robench verify (exact, plain and detection-aware), then a white-box attack."""
    pytest.importorskip("highspy")
    pytest.importorskip("pyscipopt")
    from click.testing import CliRunner

    from robench.checkpoints import save_checkpoint
    from robench.cli import cli
    from robench.training import TrainConfig, train

    cfg = TrainConfig(defense="gm", dataset="digits", arch="mlp", epochs=4, feature_dim=16, seed=0, device="cpu")
    ckpt = str(save_checkpoint(train(cfg, quiet=True), tmp_path / "mlp.pt"))
    out = str(tmp_path / "run")
    for args in (["verify", "--model", ckpt, "--n", "10", "--eps", "0.05", "--time-limit", "20", "--out", out],
                 ["attack", "--model", ckpt, "--attack", "pgd:steps=10", "--eps", "0.05", "--threat", "white-box",
                  "--n", "10", "--no-sanity", "--out", out]):
        result = CliRunner().invoke(cli, [*args, "-q"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    index = build_report([out], tmp_path / "report")
    report = tmp_path / "report"
    results = RunDir(out).results()
    frame = pd.read_csv(report / "verification.csv", **READ)
    assert list(frame["question"]) == ["robust_acc", "det_robust_acc_fpr5"]
    worst = results[results["attack"] == WORST_CASE].iloc[0]
    verify = results[results["attack"] == "verify"].set_index("detector")
    plain, det = frame.iloc[0], frame.iloc[1]
    assert plain["threat"] == det["threat"] == "white-box" and plain["detector"] == "gm-likelihood"
    assert plain["upper_bound"] == worst["robust_acc"] and det["upper_bound"] == worst["det_robust_acc_fpr5"]
    assert plain["exact"] == verify.loc["none", "robust_acc"] == worst["exact_robust_acc"]
    assert det["exact"] == verify.loc["gm-likelihood", "det_robust_acc_fpr5"] == worst["exact_det_robust_acc_fpr5"]
    assert plain["missed"] == worst["missed"] and det["missed"] == worst["missed_det_fpr5"]
    assert plain["contradicted"] == worst["contradicted"] == 0
    assert plain["exact_unknown"] == verify.loc["none", "n_unknown"]
    assert plain["exact_median_seconds"] == verify.loc["none", "verify_median_seconds"]
    assert plain["n_attack"] == plain["n_verify"] == 10
    html = index.read_text()
    section = html.split('id="verification"')[1].split("</section>")[0]
    assert f"[{plain['lower_bound']:.3f}, {plain['upper_bound']:.3f}]" in section
    assert f"{det['exact']:.3f}" in section and "verification_vs_eps.png" in section
    _, _, rows = _tabular((report / "verification.tex").read_text())
    assert len(rows) == 2 and rows[0][6].endswith(f"{plain['exact']:.3f}")
    assert _png_is_drawn(report / "plots" / "verification_vs_eps.png")
    table = pd.read_csv(report / "table_white-box.csv", dtype=str)
    assert not table["attack"].str.contains("verify").any()
    board = pd.read_csv(report / "leaderboard.csv")
    assert len(board) == 1 and board["exact_robust_acc Linf 0.05"].item() == worst["exact_robust_acc"]


def test_the_verification_files_are_byte_stable(verified, tmp_path):
    run, out, _, _ = verified
    build_report([run], tmp_path / "again")
    for name in ("verification.csv", "verification.md", "verification.tex", "plots/verification_vs_eps.png",
                 "leaderboard.csv"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
