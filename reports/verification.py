r"""The Verification section: per model and eps, the attacks' upper bound beside verification's lower bounds.

``robench verify`` rows (``attack = "verify"``) are not attacks: the threat tables,
the headline and the leaderboard's attack columns leave them out, and this module
puts them where they belong. Per (run, model, Linf eps) and question (plain robust
accuracy; detection-aware robust accuracy at the gm-likelihood 5%-FPR threshold) a
row holds:

* the upper bound: the run's ``worst-case`` row of each threat (and detector) at
  that budget, with the ``missed`` / ``contradicted`` counts robench.gap put on it;
* the lower bounds: the ``exact`` verify cell (undecided points count as not
  robust) and the best ``crown`` / ``crown-ibp`` / ``ibp`` cell, with the exact
  cell's undecided points and solver time.

Written as ``verification.csv`` (numbers as numbers, one row per such pair),
``verification.md`` and ``verification.tex`` (booktabs, like the threat tables).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from robench.results import atomic_write_csv, atomic_write_text, sort_rows
from robench.worstcase import WORST_CASE

from robench.reports.tables import (
    DASH, THREAT_ORDER, VERIFY, Table, detector_label, eps_text, markdown, norm_name,
)


@dataclass(frozen=True)
class Question:
    """What a verify cell answers, and the columns that carry it."""

    metric: str  # the verify row's value and the worst-case row's upper bound
    detector: str  # the verify cell's detector
    suffix: str  # of the gap columns on worst-case rows (missed<suffix>, contradicted<suffix>)
    label: str
    # threat models whose attacker knows what the verifier assumes: there a missed point is an attack's
    # failure; elsewhere (transfer, a detector the attacker ignores) the attack is weaker by design
    same_question: Tuple[str, ...]


QUESTIONS = (Question("robust_acc", "none", "", "robust acc", ("gray-box", "white-box")),
             Question("det_robust_acc_fpr5", "gm-likelihood", "_det_fpr5", "det. robust acc @5% FPR",
                      ("white-box",)))
COLUMNS = ["run", "model", "dataset", "norm", "eps", "question", "threat", "detector", "attacks",
           "upper_bound", "lower_bound", "exact", "certified", "certified_method", "missed", "contradicted",
           "exact_unknown", "exact_rejected", "exact_not_robust", "exact_median_seconds", "exact_max_seconds",
           "certified_unknown", "certified_median_seconds", "n_attack", "n_verify", "flagged"]
HEADER = ["model", "budget", "question", "threat", "detector", "worst-case attack", "exact", "certified",
          "truth in", "missed", "contradicted", "unknown", "s/point", "points"]
LEGEND = ("The truth lies between the bounds: the worst case over the run's attacks is an upper bound, "
          "verification a lower bound (exact: the fraction proven robust by mixed-integer programming, "
          "undecided points counted as not robust; certified: the best CROWN/IBP bound). "
          "missed: points verification proved breakable that every attack of that worst case left standing, "
          "so the attack number overstates robustness (gradient masking or a weak attack); contradicted: "
          "attack successes on points proven robust (a bug in the attack or the verifier). Red: contradicted, "
          "or missed where the attacker knows what the verifier assumes (robust acc: gray- and white-box; "
          "detection-aware: white-box; elsewhere the attack is weaker by design). unknown: points "
          "left undecided (exact: time limit or a rejected counterexample; certified: bounds too loose); "
          "s/point: median solver seconds per point; points: attacked / verified where they differ "
          "(then the two are over different points and bracket nothing).")


def is_verify(df: pd.DataFrame) -> pd.Series:
    return df["attack"] == VERIFY


# -- the frame -------------------------------------------------------------------------------

def verification_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, model, eps, question, worst-case row of that budget); verify-only budgets
    get one row with no upper bound. Numbers are results.csv's own."""
    if metrics.empty or not is_verify(metrics).any():
        return pd.DataFrame(columns=COLUMNS)
    df = metrics if "run" in metrics else metrics.assign(run="")
    verify, worst = df[is_verify(df)], df[df["attack"] == WORST_CASE]
    worst = worst[worst["norm"].map(norm_name) == "Linf"]
    records: List[Dict[str, Any]] = []
    for (run, model), cells in verify.groupby(["run", "model"], sort=True):
        attacks = worst[(worst["run"] == run) & (worst["model"] == model)]
        for eps in sorted(set(cells["eps"].astype(float))):
            at = cells[np.isclose(cells["eps"].astype(float), eps)]
            above = attacks[np.isclose(attacks["eps"].astype(float), eps)]
            base = {"run": run, "model": model, "dataset": at["dataset"].iloc[0], "norm": "Linf", "eps": eps}
            for question in QUESTIONS:
                records += _question_rows(question, at, above, base)
    out = pd.DataFrame(records, columns=COLUMNS)
    out["_q"] = out["question"].map([q.metric for q in QUESTIONS].index)
    out["_t"] = out["threat"].map(lambda t: THREAT_ORDER.index(t) if t in THREAT_ORDER else 99)
    return sort_rows(out, ["run", "model", "eps", "_q", "_t", "detector"]).drop(columns=["_q", "_t"])


def _question_rows(q: Question, verify: pd.DataFrame, worst: pd.DataFrame,
                   base: Dict[str, Any]) -> List[Dict[str, Any]]:
    cells = verify[verify["detector"].map(detector_label) == q.detector]
    if cells.empty:
        return []
    lower = {**base, "question": q.metric, **_lower_bounds(cells, q.metric)}
    if q.detector != "none":  # only worst cases with that detector have a detection-aware number
        worst = worst[worst["detector"].map(detector_label) == q.detector]
    if worst.empty:
        return [{**lower, "threat": "", "detector": q.detector, "flagged": False}]
    return [{**lower, **_upper_bound(q, row)} for _, row in worst.iterrows()]


def _lower_bounds(cells: pd.DataFrame, metric: str) -> Dict[str, Any]:
    """The exact cell and the best certified cell (as robench.gap: any method but exact certifies)."""
    exact = _best(cells[cells["objective"] == "exact"], metric)
    certified = _best(cells[cells["objective"] != "exact"], metric)
    out: Dict[str, Any] = {"exact": _value(exact, metric), "certified": _value(certified, metric),
                           "certified_method": "" if certified is None else str(certified["objective"]),
                           "exact_unknown": _value(exact, "n_unknown"),
                           "exact_rejected": _value(exact, "n_rejected"),
                           "exact_not_robust": _value(exact, "n_not_robust"),
                           "exact_median_seconds": _value(exact, "verify_median_seconds"),
                           "exact_max_seconds": _value(exact, "verify_max_seconds"),
                           "certified_unknown": _value(certified, "n_unknown"),
                           "certified_median_seconds": _value(certified, "verify_median_seconds"),
                           "n_verify": _value(exact if exact is not None else certified, "n")}
    known = [v for v in (out["exact"], out["certified"]) if math.isfinite(v)]
    out["lower_bound"] = max(known) if known else math.nan
    return out


def _best(cells: pd.DataFrame, metric: str) -> Optional[pd.Series]:
    """The cell with the highest bound (each is a valid lower bound, so the highest is the tightest)."""
    values = pd.to_numeric(cells[metric], errors="coerce") if len(cells) else pd.Series(dtype=float)
    if not values.notna().any():
        return None
    return cells.loc[values.idxmax()]


def _upper_bound(q: Question, row: pd.Series) -> Dict[str, Any]:
    missed, contradicted = _value(row, "missed" + q.suffix), _value(row, "contradicted" + q.suffix)
    return {"threat": row["threat"], "detector": detector_label(row["detector"]),
            "attacks": str(row.get("attack_params") or ""), "upper_bound": _value(row, q.metric),
            "missed": missed, "contradicted": contradicted, "n_attack": _value(row, "n"),
            # NaN compares False: an unknown count is no flag
            "flagged": bool(contradicted > 0 or (missed > 0 and row["threat"] in q.same_question))}


def _value(row: Optional[pd.Series], column: str) -> float:
    if row is None:
        return math.nan
    try:
        return float(row.get(column))
    except (TypeError, ValueError):
        return math.nan


# -- the rendered table ------------------------------------------------------------------------

def verification_table(frame: pd.DataFrame, with_run: bool = False) -> Table:
    """The section's table; rows with missed or contradicted points are flagged."""
    header = (["run"] if with_run else []) + HEADER
    text = len(header) - 9
    groups = [("", text), ("upper bound", 1), ("lower bounds", 2), ("", 6)]
    return Table("Verification: the attacks' upper bound and verification's lower bounds", header,
                 display_rows(frame, with_run), csv_name="verification.csv", md_name="verification.md",
                 tex_name="verification.tex", legend=LEGEND, groups=groups,
                 row_classes=["flagged" if f else "" for f in frame["flagged"]], text_columns=text)


def page_tables(frame: pd.DataFrame, with_run: bool = False) -> List[Table]:
    """The page's tables: one per question, without the question column (the title says it)."""
    full = verification_table(frame, with_run)
    at = full.header.index("question")
    tables = []
    for q in QUESTIONS:
        mine = (frame["question"] == q.metric).to_numpy()
        if not mine.any():
            continue
        rows = [r[:at] + r[at + 1:] for r, keep in zip(full.rows, mine) if keep]
        classes = [c for c, keep in zip(full.row_classes, mine) if keep]
        groups = [(full.groups[0][0], full.groups[0][1] - 1)] + full.groups[1:]
        tables.append(Table(TITLES[q.metric], full.header[:at] + full.header[at + 1:], rows, groups=groups,
                            row_classes=classes, text_columns=full.text_columns - 1))
    return tables


TITLES = {"robust_acc": "Robust accuracy",
          "det_robust_acc_fpr5": "Detection-aware robust accuracy (correct OR flagged by gm-likelihood at 5% FPR)"}


def display_rows(frame: pd.DataFrame, with_run: bool, at_least: str = "\u2265 ") -> List[List[str]]:
    """The shown cells of :func:`verification_frame`'s rows (``at_least``: how "lower bound only" reads)."""
    rows = []
    for _, r in frame.iterrows():
        method = f" ({r['certified_method']})" if r["certified_method"] else ""
        exact_known = math.isfinite(r["exact"])
        unknown = r["exact_unknown"] + _zero(r["exact_rejected"]) if exact_known else r["certified_unknown"]
        seconds = r["exact_median_seconds"] if exact_known else r["certified_median_seconds"]
        rows.append(([str(r["run"])] if with_run else []) + [
            str(r["model"]), f"Linf {eps_text(float(r['eps']))}", _label(r["question"]), r["threat"] or DASH,
            r["detector"], _acc(r["upper_bound"]), _acc(r["exact"]),
            _acc(r["certified"]) + (method if math.isfinite(r["certified"]) else ""),
            _interval(r, at_least), _count(r["missed"]), _count(r["contradicted"]), _count(unknown),
            DASH if not math.isfinite(seconds) else f"{seconds:.3g}", _points(r)])
    return rows


def _question(metric: str) -> Question:
    return next(q for q in QUESTIONS if q.metric == metric)


def _label(metric: str) -> str:
    return _question(metric).label


def _interval(r: pd.Series, at_least: str) -> str:
    lo, hi = r["lower_bound"], r["upper_bound"]
    if not math.isfinite(lo):
        return DASH
    if not math.isfinite(hi):
        return f"{at_least}{lo:.3f}"
    if _different_points(r):
        return DASH
    return f"[{lo:.3f}, {hi:.3f}]"


def _different_points(r: pd.Series) -> bool:
    return math.isfinite(r["n_attack"]) and math.isfinite(r["n_verify"]) and r["n_attack"] != r["n_verify"]


def _points(r: pd.Series) -> str:
    if _different_points(r):
        return f"{r['n_attack']:.0f} / {r['n_verify']:.0f}"
    return _count(r["n_verify"])


def _acc(value: float) -> str:
    # three decimals: the gap between an attack and the truth is often a point or two in a hundred
    return DASH if not math.isfinite(value) else f"{value:.3f}"


def _count(value: float) -> str:
    return DASH if not math.isfinite(value) else f"{value:.0f}"


def _zero(value: float) -> float:
    return value if math.isfinite(value) else 0.0


# -- alerts, files --------------------------------------------------------------------------------

def alerts(frame: pd.DataFrame, with_run: bool = False) -> List[str]:
    """One sentence per row with contradicted or missed points, contradictions (bugs) first: what the
    page shows in red at its top."""
    bugs, missed = [], []
    for _, r in frame[frame["flagged"]].iterrows():
        where = (f"{r['run']}: " if with_run else "") + (
            f"{r['model']} Linf {eps_text(float(r['eps']))}, {r['threat']}, detector {r['detector']}, "
            f"{_label(r['question'])}")
        if r["contradicted"] > 0:
            bugs.append(f"{where}: {r['contradicted']:.0f} attack success(es) on points proven robust "
                        "(a bug in the attack or the verifier)")
        if r["missed"] > 0 and r["threat"] in _question(r["question"]).same_question:
            missed.append(f"{where}: {r['missed']:.0f} point(s) proven breakable that every attack missed "
                          f"(attacks {r['upper_bound']:.3f} overstate it; exact {_acc(r['exact'])})")
    return bugs + missed


def write_verification(metrics: pd.DataFrame, out: Path) -> Optional[Dict[str, Any]]:
    """verification.csv, .md, .tex and the plot into ``out``; what the page shows (None: no verify rows)."""
    from robench.reports.verification_plot import verification_plot  # matplotlib only when needed

    frame = verification_frame(metrics)
    if frame.empty:
        return None
    with_run = metrics["run"].nunique() > 1 if "run" in metrics else False
    table = verification_table(frame, with_run)
    atomic_write_csv(out / table.csv_name, frame)
    atomic_write_text(out / table.md_name, markdown(table))
    atomic_write_text(out / table.tex_name, verification_latex(frame, with_run))
    plot = verification_plot(frame, QUESTIONS, out / "plots")
    return {"table": table, "tables": page_tables(frame, with_run), "alerts": alerts(frame, with_run),
            "plot": plot}


def verification_latex(frame: pd.DataFrame, with_run: bool = False) -> str:
    r"""The table as a booktabs tabular; flagged rows in bold."""
    from robench.reports.latex import TEX_HEADER, escape

    header = (["run"] if with_run else []) + HEADER
    text = len(header) - 9
    rows = []
    for flagged, cells in zip(frame["flagged"], display_rows(frame, with_run, at_least=r"$\geq$ ")):
        out = [escape(c) for c in cells[:text]] + [_tex_number(c) for c in cells[text:]]
        rows.append([rf"\textbf{{{c}}}" for c in out] if flagged else out)
    names = [TEX_HEADER.get(h, escape(h)) for h in header]
    body = pd.DataFrame(rows, columns=names).to_latex(index=False, escape=False,
                                                      column_format="l" * text + "r" * (len(header) - text))
    notes = ["% robench: verified bounds beside the attacks' worst case (\\input needs booktabs).",
             "% " + LEGEND.replace("Red:", "Bold:")]
    return "\n".join(notes) + "\n" + body


def _tex_number(cell: str) -> str:
    """A number cell as LaTeX: the dash as --, a method name escaped, the interval's brackets kept."""
    from robench.reports.latex import escape

    return cell if cell.startswith("$\\geq$") else escape(cell)

