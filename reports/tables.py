"""Tables: the tidy metrics of all runs, the headline and one table per threat model.

A threat's table has one row per result cell: per (model, detector) block the
worst case over the run's attacks leads (one row per budget), then each attack,
then the unbounded attacks (labelled with their median perturbation, not
"eps=0"). Its columns are robust accuracy, detection-aware robust accuracy at
5% FPR and detection AUC, each with its 95% bootstrap interval where
metrics.csv has one. The headline holds only the worst cases: per (model,
threat, detector), robust accuracy and detection-aware robust accuracy at each
budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import pandas as pd

from robench.results import (
    ID_COLUMNS, RESULT_COLUMNS, atomic_write_csv, atomic_write_text, order_columns, safe_name, sort_rows,
)
from robench.schema import VERIFY as VERIFY_ATTACK
from robench.worstcase import WORST_CASE

from robench.reports.runs import ReportRun

THREAT_ORDER = ("gray-box", "white-box", "black-box")
VERIFY = VERIFY_ATTACK  # the attack name of ``robench verify`` rows: bounds from verification, not attacks
DASH = "\u2013"
NORM_NAMES = {"linf": "Linf", "l2": "L2", "l1": "L1"}
NORM_ORDER = {"Linf": 0, "L2": 1, "L1": 2}  # the field's headline norm first
KIND_ORDER = {"worst": 0, "attack": 1, "unbounded": 2}
CELL_LEGEND = ("robust acc: fraction of all test points still classified correctly under attack; "
               "det. robust acc @5% FPR: correct OR flagged by the detector at its 5%-FPR threshold "
               "(no bootstrap interval); AUC: detection ROC AUC, clean vs adversarial. "
               "[lo, hi]: 95% bootstrap interval. Bold rows: the worst case per point over the run's attacks "
               "of that budget.")
CELL_COLUMNS = ["model", "detector", "attack", "budget", "robust acc [95% CI]", "det. robust acc @5% FPR",
                "AUC [95% CI]", "passes/point"]


@dataclass
class Table:
    """A rendered table: what the CSV, the Markdown, the LaTeX and the HTML page all show."""

    title: str
    header: List[str]
    rows: List[List[str]]
    csv_name: str = ""
    md_name: str = ""
    tex_name: str = ""
    legend: str = ""
    groups: List[Tuple[str, int]] = field(default_factory=list)  # a spanning header row above ``header``
    short_header: List[str] = field(default_factory=list)  # under ``groups`` on the page (the spans say the rest)
    row_classes: List[str] = field(default_factory=list)
    text_columns: int = 2  # the first columns are text (left-aligned), the rest numbers


def tidy_metrics(runs: Sequence[ReportRun]) -> pd.DataFrame:
    """All runs' results with their worst-case rows in one tidy frame, a ``run`` column first."""
    frames = [r.metrics.assign(run=r.name) for r in runs]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df = order_columns(df, ["run", *RESULT_COLUMNS])
    return sort_rows(df, ["run", *ID_COLUMNS])


def attack_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The rows made by attacks (worst cases included), without ``robench verify``'s rows."""
    return df[df["attack"] != VERIFY] if "attack" in df else df


def threats_in(df: pd.DataFrame) -> List[str]:
    found = [t for t in df["threat"].dropna().unique().tolist() if t != ""]
    return sorted(found, key=lambda t: (THREAT_ORDER.index(t) if t in THREAT_ORDER else 99, t))


def attack_label(row: Any) -> str:
    """``pgd`` or ``pgd(steps=20)``: the attack with its non-default parameters."""
    if row["attack"] == WORST_CASE:
        return WORST_CASE
    params = str(row.get("attack_params") or "")
    return f"{row['attack']}({params})" if params else str(row["attack"])


def members_label(row: Any) -> str:
    """``worst case of fgsm, pgd(steps=10)`` from a worst-case row's member specs."""
    specs = [s for s in str(row.get("attack_params") or "").split(";") if s]
    names = [f"{a}({p})" if p else a for a, _, p in (s.partition(":") for s in specs)]
    return "worst case of " + ", ".join(names) if names else "worst case"


def detector_label(value: Any) -> str:
    return str(value) if value not in (None, "") else "none"


def cell_kind(row: Any) -> str:
    """``worst``, ``attack`` (a bounded budget) or ``unbounded`` (eps 0: a minimal-perturbation attack)."""
    if row["attack"] == WORST_CASE:
        return "worst"
    return "attack" if _float(row.get("eps")) > 0 else "unbounded"


def norm_name(value: Any) -> str:
    text = "" if _blank(value) else str(value)
    return NORM_NAMES.get(text.lower(), text)


def budget_label(row: Any) -> str:
    """``Linf 0.1``; ``unbounded (median L2 0.84)`` for eps 0, with its successful examples' median size."""
    eps, norm = _float(row.get("eps")), norm_name(row.get("norm"))
    if eps > 0:
        return f"{norm} {eps_text(eps)}" if norm.lower() in NORM_NAMES else f"eps {eps_text(eps)}"
    sizes = [(name, _float(row.get(f"median_{key}"))) for name, key in (("L2", "l2"), ("Linf", "linf"))]
    sizes = [s for s in sizes if s[0] == norm] or sizes  # the attack's own norm when it has one we know
    shown = ", ".join(f"{name} {v:.3g}" for name, v in sizes if math.isfinite(v))
    return f"unbounded (median {shown})" if shown else "unbounded (no successful example)"


def budget_order(budget: Tuple[str, float]) -> Tuple[int, str, float]:
    return NORM_ORDER.get(budget[0], 9), budget[0], budget[1]


def eps_text(eps: float) -> str:
    return f"{eps:.4g}"


# -- a threat's cells ----------------------------------------------------------------------

def cell_frame(df: pd.DataFrame, threat: str) -> pd.DataFrame:
    """The threat's rows in table order, with the display keys added (``_kind``, ``_attack``, ...)."""
    sub = df[df["threat"] == threat].copy()
    if sub.empty:
        return sub
    sub["_kind"] = sub.apply(cell_kind, axis=1)
    sub["_attack"] = [members_label(r) if k == "worst" else attack_label(r)
                      for k, (_, r) in zip(sub["_kind"], sub.iterrows())]
    sub["_detector"] = sub["detector"].map(detector_label)
    sub["_budget"] = sub.apply(budget_label, axis=1)
    sub["_order"] = sub["_kind"].map(KIND_ORDER)
    sub["_norm"] = sub["norm"].map(lambda n: NORM_ORDER.get(norm_name(n), 9))
    keys = (["run"] if "run" in sub else []) + ["model", "_detector", "_order", "_norm", "eps", "_attack"]
    return sort_rows(sub, keys)


def cell_rows(frame: pd.DataFrame, interval: Callable[[Any, Any, Any], str],
              with_run: bool) -> List[List[str]]:
    """The displayed cells of :func:`cell_frame`, intervals written by ``interval(value, lo, hi)``."""
    rows = []
    for _, r in frame.iterrows():
        cells = [str(r["run"])] if with_run else []
        cells += [str(r["model"]), r["_detector"], r["_attack"], r["_budget"],
                  interval(r.get("robust_acc"), r.get("robust_acc_lo"), r.get("robust_acc_hi")),
                  num(r.get("det_robust_acc_fpr5")),
                  interval(r.get("auc"), r.get("auc_lo"), r.get("auc_hi")),
                  count(r.get("passes_per_sample"))]
        rows.append(cells)
    return rows


def cell_table(df: pd.DataFrame, threat: str, with_run: bool = False) -> Table:
    """One row per cell of ``threat``, the worst case leading each (model, detector) block."""
    frame = cell_frame(df, threat)
    header = (["run"] if with_run else []) + CELL_COLUMNS
    rows = cell_rows(frame, bracketed, with_run)
    classes = ["worst" if k == "worst" else "" for k in frame.get("_kind", [])]
    return Table(f"{threat}: robust accuracy, detection-aware robust accuracy and AUC per attack", header,
                 rows, legend=CELL_LEGEND, row_classes=classes, text_columns=len(header) - 4)


# -- the headline --------------------------------------------------------------------------

def headline(df: pd.DataFrame, with_run: bool = False) -> Optional[Table]:
    """Worst cases only: rows (model, threat, detector), per budget robust and detection-aware accuracy."""
    worst = df[df["attack"] == WORST_CASE].copy()
    if worst.empty:
        return None
    worst["_detector"] = worst["detector"].map(detector_label)
    worst["_threat"] = worst["threat"].map(lambda t: THREAT_ORDER.index(t) if t in THREAT_ORDER else 99)
    budgets = sorted({(norm_name(n), float(e)) for n, e in zip(worst["norm"], worst["eps"])}, key=budget_order)
    keys = (["run"] if with_run else []) + ["model", "_threat", "threat", "_detector"]
    header = (["run"] if with_run else []) + ["model", "threat", "detector", "clean acc"]
    groups: List[Tuple[str, int]] = [("", len(header))]
    for norm, eps in budgets:
        header += [f"{norm} {eps_text(eps)}: robust acc", f"{norm} {eps_text(eps)}: det. robust acc @5% FPR"]
        groups.append((f"{norm} eps {eps_text(eps)}", 2))
    rows = []
    for key, group in sort_rows(worst, keys).groupby(keys, sort=False):
        key = dict(zip(keys, key))
        cells = ([str(key["run"])] if with_run else []) + [str(key["model"]), key["threat"], key["_detector"],
                                                           num(group["clean_acc"].mean())]
        for norm, eps in budgets:
            hit = group[(group["norm"].map(norm_name) == norm) & (group["eps"].astype(float) == eps)]
            cells += [num(hit["robust_acc"].iloc[0]), num(hit["det_robust_acc_fpr5"].iloc[0])] if len(hit) \
                else ["", ""]
        rows.append(cells)
    short = header[:groups[0][1]] + ["robust acc", "with detector (5% FPR)"] * len(budgets)
    return Table("Headline: worst case over the run's attacks", header, rows, legend=HEADLINE_LEGEND,
                 groups=groups, short_header=short, text_columns=groups[0][1] - 1)


HEADLINE_LEGEND = ("Per budget (norm, eps), the worst case per test point over all the run's attacks: robust "
                   "accuracy, then with the detector at its 5%-FPR threshold (a point is kept when classified "
                   "correctly OR flagged). Intervals and every attack: the tables below.")


# -- formatting -------------------------------------------------------------------------------

def num(value: Any) -> str:
    v = _float(value)
    return DASH if not math.isfinite(v) else f"{v:.2f}"


def count(value: Any) -> str:
    v = _float(value)
    return DASH if not math.isfinite(v) else f"{v:.0f}"


def bracketed(value: Any, lo: Any, hi: Any) -> str:
    """``0.22 [0.10, 0.33]``; the value alone when there is no interval."""
    v, a, b = _float(value), _float(lo), _float(hi)
    if not math.isfinite(v):
        return DASH
    return f"{v:.2f} [{a:.2f}, {b:.2f}]" if math.isfinite(a) and math.isfinite(b) else f"{v:.2f}"


def markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table (pipes in values escaped), its legend below."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    out = [f"### {table.title}", "", line(table.header), line(["---"] * len(table.header))]
    out += [line(r) for r in table.rows]
    if table.legend:
        out += ["", table.legend]
    return "\n".join(out) + "\n"


def write_tables(metrics: pd.DataFrame, out: Path) -> Tuple[Optional[Table], List[Table]]:
    """metrics.csv, headline.csv/.md, then ``table_<threat>.csv`` and ``.md`` per threat (the
    ``.tex`` beside them: :func:`robench.reports.latex.write_latex_tables`).

    metrics.csv holds every row; the headline and the threat tables only the attacks'
    (verify rows have their own section, :mod:`robench.reports.verification`).
    """
    atomic_write_csv(out / "metrics.csv", metrics)
    with_run = spans_runs(metrics)
    df = attack_rows(metrics)
    top = headline(df, with_run)
    if top is not None:
        top.csv_name, top.md_name = "headline.csv", "headline.md"
        _write(top, out)
    tables = []
    for threat in threats_in(df):
        table = cell_table(df, threat, with_run)
        stem = table_stem(threat)
        table.csv_name, table.md_name, table.tex_name = f"{stem}.csv", f"{stem}.md", f"{stem}.tex"
        _write(table, out)
        tables.append(table)
    return top, tables


def table_stem(threat: str) -> str:
    return f"table_{safe_name(threat)}"


def spans_runs(metrics: pd.DataFrame) -> bool:
    """Whether the rows come from more than one run directory (tables then get a run column)."""
    return bool(metrics["run"].nunique() > 1) if "run" in metrics and len(metrics) else False


def _write(table: Table, out: Path) -> None:
    atomic_write_csv(out / table.csv_name, pd.DataFrame(table.rows, columns=table.header))
    atomic_write_text(out / table.md_name, markdown(table))


def frame_table(df: pd.DataFrame, title: str) -> Table:
    """Any small frame as a Table (for sanity checks)."""
    rows = [["" if _blank(v) else str(v) for v in rec] for rec in df.itertuples(index=False)]
    return Table(title, [str(c) for c in df.columns], rows)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
