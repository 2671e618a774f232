"""leaderboard.csv and leaderboard.html: every run given, one row per (model, dataset, threat, detector).

A row holds the model's defense and architecture, its clean accuracy and, per
budget, the worst case over its run's attacks (robust accuracy, detection-aware
robust accuracy at 5% FPR, AUC), where ``robench verify`` measured that budget
its verified lower bounds (exact and certified robust accuracy, exact
detection-aware robust accuracy), the passes per point those worst cases cost,
and a link to the run's section of index.html. Verify rows are no attacks: they
add no row and no attack column. The HTML table sorts by any
column in the browser (inline JavaScript, no network); ``#sort=<column>`` or
``#sort=<column>-desc`` in the address opens it sorted.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import pandas as pd

from robench.results import atomic_write_csv, sort_rows
from robench.worstcase import WORST_CASE

from robench.reports.tables import THREAT_ORDER, attack_rows, budget_order, detector_label, eps_text, norm_name

ROW_KEY = ["run", "model", "dataset", "threat", "detector"]
PER_BUDGET = (("robust_acc", "robust acc"), ("det_robust_acc_fpr5", "det. robust acc @5% FPR"), ("auc", "AUC"))
# Verified lower bounds the worst-case rows carry (robench.gap); a column only when some row has a value
VERIFIED = (("exact_robust_acc", "exact robust acc"), ("certified_robust_acc", "certified robust acc"),
            ("exact_det_robust_acc_fpr5", "exact det. robust acc @5% FPR"))
LEGEND = ("Per budget, the worst case per test point over the run's attacks of that norm and eps. "
          "det. robust acc @5% FPR: classified correctly OR flagged at the detector's 5%-FPR threshold. "
          "passes/point: forward plus backward passes per test point of those worst cases, averaged over "
          "the budgets. Click a column header to sort (again to reverse).")
VERIFIED_LEGEND = (" exact / certified: robench verify's lower bounds at that budget (the truth lies between them "
                   "and the worst case; blank where not verified).")


def per_budget(metrics: pd.DataFrame) -> Tuple[Tuple[str, str], ...]:
    """(column, label) per budget: the worst case's metrics, then the verified bounds any row has."""
    worst = metrics[metrics["attack"] == WORST_CASE]
    known = tuple(item for item in VERIFIED
                  if item[0] in worst and pd.to_numeric(worst[item[0]], errors="coerce").notna().any())
    return PER_BUDGET + known


def budgets_of(metrics: pd.DataFrame) -> List[Tuple[str, float]]:
    worst = metrics[metrics["attack"] == WORST_CASE]
    return sorted({(norm_name(n), float(e)) for n, e in zip(worst["norm"], worst["eps"])}, key=budget_order)


def leaderboard_frame(metrics: pd.DataFrame, pages: Mapping[str, str]) -> pd.DataFrame:
    """The leaderboard's rows, numbers as numbers (``leaderboard.csv``).

    Args:
        metrics: the tidy metrics of all runs (``run`` column, worst-case rows included).
        pages: run name -> address of its page (``index.html#run-1``).
    """
    df = attack_rows(metrics)
    df = df.assign(detector=df["detector"].map(detector_label))
    budgets, columns_per_budget = budgets_of(df), per_budget(df)
    records = []
    for key, group in df.groupby(ROW_KEY, sort=False):
        first = group.iloc[0]
        rec: Dict[str, Any] = dict(zip(ROW_KEY, key))
        rec.update(defense=first["defense"], arch=first["arch"],
                   clean_acc=pd.to_numeric(group["clean_acc"], errors="coerce").mean())
        worst = group[group["attack"] == WORST_CASE]
        for norm, eps in budgets:
            hit = worst[(worst["norm"].map(norm_name) == norm) & (worst["eps"].astype(float) == eps)]
            for col, _ in columns_per_budget:
                rec[_budget_column(col, norm, eps)] = float(hit[col].iloc[0]) if len(hit) else math.nan
        passes = pd.to_numeric(worst.get("passes_per_sample"), errors="coerce")
        rec["passes_per_point"] = float(passes.mean()) if len(worst) else math.nan
        rec["page"] = pages.get(str(key[0]), "index.html")
        records.append(rec)
    columns = ["run", "model", "defense", "dataset", "arch", "threat", "detector", "clean_acc"]
    columns += [_budget_column(c, n, e) for n, e in budgets for c, _ in columns_per_budget]
    columns += ["passes_per_point", "page"]
    out = pd.DataFrame(records, columns=columns)
    out["_threat"] = out["threat"].map(lambda t: THREAT_ORDER.index(t) if t in THREAT_ORDER else 99)
    return sort_rows(out, ["run", "model", "dataset", "_threat", "detector"]).drop(columns="_threat")


def _budget_column(metric: str, norm: str, eps: float) -> str:
    return f"{metric} {norm} {eps_text(eps)}"


def write_leaderboard(metrics: pd.DataFrame, pages: Mapping[str, str], out: Path, title: str) -> Path:
    """Write ``leaderboard.csv`` and ``leaderboard.html`` into ``out``; returns the HTML's path."""
    from robench.reports.page import environment
    from robench.results import atomic_write_text

    frame = leaderboard_frame(metrics, pages)
    atomic_write_csv(out / "leaderboard.csv", frame)
    attacks = attack_rows(metrics)
    columns = per_budget(attacks)
    header, groups = _header(budgets_of(attacks), columns)
    legend = LEGEND + (VERIFIED_LEGEND if len(columns) > len(PER_BUDGET) else "")
    html = environment().get_template("leaderboard.html").render(
        title=title, header=header, groups=groups, rows=_rows(frame), legend=legend)
    return atomic_write_text(out / "leaderboard.html", html)


def _header(budgets: List[Tuple[str, float]], columns: Tuple[Tuple[str, str], ...]
            ) -> Tuple[List[str], List[Tuple[str, int]]]:
    header = ["run", "model", "defense", "dataset", "arch", "threat", "detector", "clean acc"]
    groups = [("", len(header))]
    for norm, eps in budgets:
        header += [label for _, label in columns]
        verified = " and verified bounds" if len(columns) > len(PER_BUDGET) else ""
        groups.append((f"worst case{verified}, {norm} eps {eps_text(eps)}", len(columns)))
    header.append("passes/point")
    groups.append(("", 1))
    return header, groups


def _rows(frame: pd.DataFrame) -> List[Dict[str, Any]]:
    """Per row: the page link and cells of (text, sort key); numbers sort by value, blanks last."""
    text = ["run", "model", "defense", "dataset", "arch", "threat", "detector"]
    numbers = [c for c in frame.columns if c not in text and c != "page"]
    out = []
    for _, r in frame.iterrows():
        cells = [{"text": str(r[c]), "sort": None} for c in text]
        for c in numbers:
            v = float(r[c]) if pd.notna(r[c]) else math.nan
            shown = "\u2013" if not math.isfinite(v) else (f"{v:.0f}" if c == "passes_per_point" else f"{v:.3f}")
            cells.append({"text": shown, "sort": repr(v) if math.isfinite(v) else ""})
        out.append({"page": r["page"], "cells": cells})
    return out
