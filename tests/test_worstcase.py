"""robench.worstcase: the per-point worst case over a run's attacks, its invariants and its checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robench.errors import RobenchError
from robench.metrics import cell_metrics
from robench.worstcase import WORST_CASE, worst_case_checks, worst_case_problems, worst_case_rows

T1, T5 = 2.0, 1.0  # detector thresholds at 1% and 5% FPR: flagged when the score is above


def member(attack: str, label, clean_pred, adv_pred, adv_score, clean_score=None, eps=0.1, norm="Linf",
           detector="gm-likelihood", params="", passes=10.0, cascade_after="", threat="white-box"):
    """A results row and its samples for one cell, metrics from robench.metrics like a real cell."""
    label, clean_pred, adv_pred = (np.asarray(a) for a in (label, clean_pred, adv_pred))
    n = len(label)
    scored = detector != "none"
    adv_score = np.asarray(adv_score, float) if scored else np.full(n, np.nan)
    clean_score = (np.zeros(n) if clean_score is None else np.asarray(clean_score, float)) if scored \
        else np.full(n, np.nan)
    cell_id = f"{attack}-{params}-{eps}-{norm}-{threat}-{detector}".replace(":", "_").replace("=", "_")
    metrics = cell_metrics(label, clean_pred, adv_pred, clean_score if scored else None,
                           adv_score if scored else None, {0.01: T1, 0.05: T5} if scored else None,
                           linf=np.full(n, eps), l2=np.full(n, 3 * eps))
    row = {"model": "gm", "defense": "gm", "dataset": "digits", "arch": "small-cnn", "attack": attack,
           "attack_params": params, "norm": norm, "eps": eps, "threat": threat, "objective": "ce",
           "detector": detector, "seed": 0, **metrics, "passes_per_sample": passes, "objective_wins": "",
           "cascade_after": cascade_after, "cell_id": cell_id}
    samples = pd.DataFrame({
        "cell_id": cell_id, "model": "gm", "attack": attack, "eps": eps, "threat": threat, "detector": detector,
        "index": np.arange(n) * 7, "input_sha1": [f"{i:012x}" for i in range(n)], "label": label,
        "clean_pred": clean_pred, "adv_pred": adv_pred, "clean_score": clean_score, "adv_score": adv_score,
        "linf": eps, "l2": 3 * eps, "success": (clean_pred == label) & (adv_pred != label),
        "flagged_fpr1": scored & (adv_score > T1), "flagged_fpr5": scored & (adv_score > T5)})
    return row, samples


def frames(*members):
    rows, samples = zip(*members)
    return pd.DataFrame(list(rows)), pd.concat(samples, ignore_index=True)


# -- the rule on hand-made points ------------------------------------------------------

LABEL = [0, 1, 2, 3, 4]
CLEAN = [0, 1, 2, 3, 9]  # point 4 is misclassified when clean


def hand_made():
    # point: 0 both fool, pgd less suspicious | 1 both fail, pgd lower score | 2 only fgsm fools
    #        3 both fool with the same score (tie) | 4 wrong when clean, untouched
    fgsm = member("fgsm", LABEL, CLEAN, [5, 1, 6, 7, 9], [5.0, 0.5, 0.1, 3.0, 0.0], passes=2.0)
    pgd = member("pgd", LABEL, CLEAN, [5, 1, 2, 8, 9], [0.5, 0.2, -1.0, 3.0, 0.0], params="steps=10",
                 passes=20.0)
    cw = member("cw-l2", LABEL, CLEAN, [5, 6, 7, 8, 9], [0.0] * 5, eps=0.0, norm="L2")  # unbounded
    l2 = member("pgd-l2", LABEL, CLEAN, [1, 1, 2, 3, 9], [0.0] * 5, eps=1.5, norm="L2")
    return frames(fgsm, pgd, cw, l2)


def test_the_worst_example_per_point():
    results, samples = hand_made()
    worst = worst_case_rows(results, samples)
    assert len(worst) == 2  # Linf eps 0.1 (fgsm, pgd) and L2 eps 1.5 (pgd-l2); cw-l2 at eps 0 is unbounded
    row = worst[worst["norm"] == "Linf"].iloc[0]
    assert row["attack"] == WORST_CASE and row["attack_params"] == "fgsm;pgd:steps=10"
    assert row["objective"] == "" and row["eps"] == 0.1 and row["threat"] == "white-box"
    assert row["n"] == 5 and row["robust_acc"] == pytest.approx(1 / 5)  # only point 1 survives both
    # Chosen: pgd (0.5), pgd (0.2), fgsm (0.1), fgsm (3.0, tie to the first), either (0.0).
    # Flagged at 5% (score > 1): only point 3; at 1% (> 2): point 3.
    assert row["det_robust_acc_fpr5"] == pytest.approx(2 / 5)  # point 1 right, point 3 flagged
    assert row["det_robust_acc_fpr1"] == pytest.approx(2 / 5)
    assert row["tpr_at_fpr5"] == pytest.approx(1 / 3)  # of the successful points 0, 2, 3
    # Lost (misclassified and under the 5% threshold): 0 (pgd), 2 (fgsm), 4 (fgsm: first in order)
    assert row["objective_wins"] == "fgsm:2;pgd:1"
    assert row["passes_per_sample"] == 22.0
    assert row["clean_acc"] == pytest.approx(4 / 5)
    assert row["fpr_at_fpr5"] == results.iloc[0]["fpr_at_fpr5"]
    assert 0 <= row["auc"] <= 1 and row["robust_acc_lo"] <= row["robust_acc"] <= row["robust_acc_hi"]
    l2 = worst[worst["norm"] == "L2"].iloc[0]
    assert l2["eps"] == 1.5 and l2["attack_params"] == "pgd-l2" and l2["robust_acc"] == pytest.approx(3 / 5)


def test_a_lower_score_wins_only_among_misclassified_examples():
    # fgsm keeps the point correct with a tiny score; pgd fools it with a large one: pgd's counts
    fgsm = member("fgsm", [0], [0], [0], [-5.0])
    pgd = member("pgd", [0], [0], [3], [9.0])
    row = worst_case_rows(*frames(fgsm, pgd)).iloc[0]
    assert row["robust_acc"] == 0.0 and row["det_robust_acc_fpr5"] == 1.0  # fooled, but flagged
    assert row["objective_wins"] == "fgsm:0;pgd:0"  # flagged: the defender did not lose it


def test_rows_already_named_worst_case_are_no_members():
    results, samples = hand_made()
    first = worst_case_rows(results, samples)
    again = worst_case_rows(pd.concat([results, first.assign(cell_id="x")], ignore_index=True), samples)
    pd.testing.assert_frame_equal(first, again)


def test_without_a_detector_the_first_misclassified_example_counts():
    fgsm = member("fgsm", LABEL, CLEAN, [5, 1, 6, 7, 9], None, detector="none")
    pgd = member("pgd", LABEL, CLEAN, [5, 6, 2, 8, 9], None, detector="none")
    row = worst_case_rows(*frames(fgsm, pgd)).iloc[0]
    assert row["robust_acc"] == 0.0 and row["objective_wins"] == "fgsm:4;pgd:1"
    assert np.isnan(row["auc"]) and np.isnan(row["det_robust_acc_fpr5"]) and np.isnan(row["tpr_at_fpr5"])


def test_cascade_ties_go_to_the_attack_that_ran_first():
    # Chain pgd -> fgsm: the fgsm cell carries pgd's example of point 0 (identical record).
    pgd = member("pgd", [0, 1], [0, 1], [3, 1], [0.2, 0.0])
    fgsm = member("fgsm", [0, 1], [0, 1], [3, 4], [0.2, 0.1], cascade_after="pgd")
    row = worst_case_rows(*frames(pgd, fgsm)).iloc[0]
    assert row["objective_wins"] == "pgd:1;fgsm:1"  # in chain order; alphabetical ties would credit fgsm twice
    assert row["robust_acc"] == 0.0


# -- joining results rows to their samples ---------------------------------------------

def test_the_three_ways_to_find_a_rows_cell():
    results, samples = hand_made()
    expected = worst_case_rows(results, samples)
    plain = results.drop(columns="cell_id")
    cells = results[["cell_id", "model", "defense", "dataset", "arch", "attack", "attack_params", "norm", "eps",
                     "threat", "objective", "detector", "seed"]]
    pd.testing.assert_frame_equal(worst_case_rows(plain, samples, cells=cells), expected)
    pd.testing.assert_frame_equal(worst_case_rows(plain, samples), expected)  # on the cell key


def test_ambiguous_or_missing_records_are_one_clear_error():
    results, samples = hand_made()
    twin = samples[samples["attack"] == "fgsm"].assign(cell_id="fgsm-twin")
    with pytest.raises(RobenchError, match=r"2 cells for the results row gm white-box Linf eps 0.1"):
        worst_case_rows(results.drop(columns="cell_id"), pd.concat([samples, twin]))
    with pytest.raises(RobenchError, match="no per-sample records for pgd"):
        worst_case_rows(results, samples[samples["attack"] != "pgd"])


# -- invariants over random grids ------------------------------------------------------

@st.composite
def grids(draw):
    n = draw(st.integers(1, 25))
    k = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    detector = draw(st.sampled_from(["gm-likelihood", "none"]))
    label = rng.integers(0, 3, n)
    clean = np.where(rng.random(n) < 0.8, label, (label + 1) % 3)
    members = []
    for i in range(k):
        wrong = rng.random(n) < draw(st.floats(0, 1))
        adv = np.where(wrong, (label + 1 + rng.integers(0, 2, n)) % 3, label)
        scores = np.round(rng.normal(1.0, 1.5, n), 1)  # rounded: ties happen
        members.append(member(["fgsm", "pgd", "bim", "mim"][i], label, clean, adv, scores, detector=detector,
                              clean_score=rng.normal(0, 1, n)))
    return frames(*members)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grids())
def test_worst_case_loses_exactly_the_points_some_attack_won(grid):
    results, samples = grid
    row = worst_case_rows(results, samples).iloc[0]
    assert row["robust_acc"] <= results["robust_acc"].min() + 1e-12
    by_point = samples.groupby("index")
    right = samples["adv_pred"] == samples["label"]
    assert row["robust_acc"] == pytest.approx(right.groupby(samples["index"]).all().mean())
    if results["detector"].iloc[0] != "none":
        for tag in ("fpr1", "fpr5"):
            kept = (right | samples[f"flagged_{tag}"]).groupby(samples["index"]).all().mean()
            assert row[f"det_robust_acc_{tag}"] == pytest.approx(kept)
            assert row[f"det_robust_acc_{tag}"] <= results[f"det_robust_acc_{tag}"].min() + 1e-12
        lost = (~right & ~samples["flagged_fpr5"]).groupby(samples["index"]).any().sum()
        assert sum(int(w.split(":")[1]) for w in row["objective_wins"].split(";")) == lost
    assert row["n"] == by_point.ngroups
    assert worst_case_problems(pd.concat([results, pd.DataFrame([row])], ignore_index=True)) == []


# -- the sanity checks -------------------------------------------------------------------

def test_problems_name_a_member_stronger_than_its_worst_case():
    results, samples = hand_made()
    worst = worst_case_rows(results, samples)
    ok = pd.concat([results, worst], ignore_index=True)
    assert worst_case_problems(ok) == []
    assert worst_case_checks(ok)[0]["flagged"] is False
    broken = ok.copy()
    broken.loc[broken["attack"] == WORST_CASE, "det_robust_acc_fpr5"] = 0.9
    problems = worst_case_problems(broken)
    assert len(problems) == 3 and all("det_robust_acc_fpr5" in p for p in problems)  # fgsm, pgd, pgd-l2
    assert "pgd alone has det_robust_acc_fpr5 0.6000, below the worst case's 0.9000" in " ".join(problems)
    check = worst_case_checks(broken)[0]
    assert check["model"] == "gm" and check["flagged"] is True and "a bug" in check["evidence"]


def test_problems_name_members_on_different_points():
    fgsm = member("fgsm", [0, 1], [0, 1], [0, 1], [0.0, 0.0])
    pgd = member("pgd", [0, 1, 2], [0, 1, 2], [0, 1, 2], [0.0, 0.0, 0.0])
    results, samples = frames(fgsm, pgd)
    both = pd.concat([results, worst_case_rows(results, samples)], ignore_index=True)
    assert any("different numbers of points (2, 3)" in p for p in worst_case_problems(both))
    orphan = both[both["attack"] == WORST_CASE].assign(eps=0.4)
    assert worst_case_problems(orphan) == [
        "gm white-box Linf eps 0.4 detector gm-likelihood: a worst-case row without any bounded attack "
        "of that budget"]


def test_a_lone_attack_is_its_own_worst_case_intervals_included():
    rng = np.random.default_rng(3)
    label = rng.integers(0, 3, 40)
    adv = np.where(rng.random(40) < 0.5, (label + 1) % 3, label)
    one = member("pgd", label, label, adv, rng.normal(1, 1, 40), clean_score=rng.normal(0, 1, 40))
    results, samples = frames(one)
    samples = samples.sample(frac=1.0, random_state=0)  # the cell's own order, not sorted by index
    results = results.assign(cell_id=samples["cell_id"].iloc[0])
    row = worst_case_rows(results, samples).iloc[0]
    reference = cell_metrics(samples["label"], samples["clean_pred"], samples["adv_pred"], samples["clean_score"],
                             samples["adv_score"], {0.01: T1, 0.05: T5}, samples["linf"], samples["l2"])
    for col in ("robust_acc", "robust_acc_lo", "robust_acc_hi", "auc", "auc_lo", "auc_hi", "det_robust_acc_fpr1",
                "det_robust_acc_fpr5", "tpr_at_fpr5", "aupr", "median_l2"):
        assert row[col] == pytest.approx(reference[col]), col
