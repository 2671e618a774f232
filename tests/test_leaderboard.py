"""leaderboard.csv and leaderboard.html across runs: the rows, the links, and sorting in headless Chromium."""

from __future__ import annotations

import html as htmllib
import math
import re

import pandas as pd
import pytest
from test_reports import chromium, make_run, run_chromium  # noqa: F401  (chromium is a fixture)

from robench.reports import build_report
from robench.worstcase import WORST_CASE

ODD = "gm<b>&"  # a model name that must come out escaped


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    base = tmp_path_factory.mktemp("board")
    a = make_run(base / "a", seed=1, sanity=False, attacks=("pgd",), epsilons=(0.1, 0.3))
    b = make_run(base / "b", seed=2, sanity=False, models=((ODD, 2),), attacks=("pgd",), epsilons=(0.1,),
                 threats=("white-box",))
    build_report([a, b], base / "out")
    return base / "out"


def _metrics(out) -> pd.DataFrame:
    return pd.read_csv(out / "metrics.csv", keep_default_na=False, na_values=[""])


def test_one_row_per_model_dataset_threat_detector(board):
    frame = pd.read_csv(board / "leaderboard.csv", keep_default_na=False, na_values=[""])
    # run a: (gm, softmax) x (gray, white) x (gm-likelihood, none); run b: one model, white-box, two detectors
    assert len(frame) == 8 + 2
    assert not frame.duplicated(["run", "model", "dataset", "threat", "detector"]).any()
    assert list(frame.columns[:8]) == ["run", "model", "defense", "dataset", "arch", "threat", "detector",
                                       "clean_acc"]
    assert "robust_acc Linf 0.3" in frame and "det_robust_acc_fpr5 Linf 0.1" in frame and "auc Linf 0.1" in frame
    metrics = _metrics(board)
    worst = metrics[metrics["attack"] == WORST_CASE].fillna({"detector": "none"})
    for _, row in frame.iterrows():
        mine = worst[(worst["run"] == row["run"]) & (worst["model"] == row["model"])
                     & (worst["threat"] == row["threat"]) & (worst["detector"] == row["detector"])]
        for eps in (0.1, 0.3):
            hit = mine[mine["eps"] == eps]
            if len(hit):
                assert row[f"robust_acc Linf {eps:g}"] == pytest.approx(hit["robust_acc"].item())
                assert row[f"auc Linf {eps:g}"] == pytest.approx(hit["auc"].item(), nan_ok=True)
            else:  # run b never attacked at 0.3: a blank, not a number
                assert math.isnan(row[f"robust_acc Linf {eps:g}"])
        assert row["passes_per_point"] == pytest.approx(mine["passes_per_sample"].mean())
    assert set(frame["page"]) == {"index.html#run-1", "index.html#run-2"}


def test_links_land_on_the_runs_section_and_the_page_needs_no_network(board):
    page = (board / "leaderboard.html").read_text()
    index = (board / "index.html").read_text()
    for anchor in ("run-1", "run-2"):
        assert f'href="index.html#{anchor}"' in page and f'id="{anchor}"' in index
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script src" not in page
    assert ODD not in page and htmllib.escape(ODD) in page


def _column(dom: str, i: int):
    """The text of column ``i`` of the leaderboard's body rows, in DOM order."""
    body = dom.split("<tbody>")[1].split("</tbody>")[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    return [htmllib.unescape(re.sub(r"<[^>]+>", "", re.findall(r"<td[^>]*>(.*?)</td>", r, re.S)[i])) for r in rows]


@pytest.mark.parametrize("column,descending", [("clean acc", False), ("model", False), ("robust acc", True)])
def test_sorts_by_a_clicked_column(board, chromium, tmp_path, column, descending):  # noqa: F811
    frame = pd.read_csv(board / "leaderboard.csv", keep_default_na=False, na_values=[""])
    names = {"clean acc": ("clean_acc", 7), "model": ("model", 1),
             "robust acc": ("robust_acc Linf 0.3", 8 + 3)}  # the second budget's robust accuracy
    field, i = names[column]
    url = (board / "leaderboard.html").resolve().as_uri() + f"#sort={i}" + ("-desc" if descending else "")
    dom = run_chromium(chromium, tmp_path / "profile", "--dump-dom", url).stdout
    assert 'aria-sort="descending"' in dom if descending else 'aria-sort="ascending"' in dom
    shown = _column(dom, i)
    assert len(shown) == len(frame)
    if field == "model":
        assert shown == sorted(shown, key=str.lower)
        return
    values = [float(v) if v != "\u2013" else math.nan for v in shown]
    known = [v for v in values if not math.isnan(v)]
    assert known == sorted(known, reverse=descending)
    assert all(math.isnan(v) for v in values[len(known):])  # blanks last, either way
    assert len(known) == frame[field].notna().sum()
