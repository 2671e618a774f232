"""Tables: the tidy metrics of all runs, and one pivot per threat model.

A pivot has one row per (model, detector) and one column per (attack, eps); a
cell reads ``robust accuracy / detection AUC`` (``0.12 / 0.95``). Repeated
cells (several runs or seeds) are averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence

import pandas as pd

from robench.results import (
    ID_COLUMNS, RESULT_COLUMNS, atomic_write_csv, atomic_write_text, order_columns, safe_name, sort_rows,
)

from robench.reports.runs import ReportRun

THREAT_ORDER = ("gray-box", "white-box", "black-box")
DASH = "\u2013"


@dataclass
class Table:
    """A rendered table: what the CSV, the Markdown and the HTML page all show."""

    title: str
    header: List[str]
    rows: List[List[str]]
    csv_name: str = ""
    md_name: str = ""


def tidy_metrics(runs: Sequence[ReportRun]) -> pd.DataFrame:
    """All runs' results in one tidy frame, a ``run`` column first."""
    frames = [r.results.assign(run=r.name) for r in runs]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df = order_columns(df, ["run", *RESULT_COLUMNS])
    return sort_rows(df, ["run", *ID_COLUMNS])


def threats_in(df: pd.DataFrame) -> List[str]:
    found = [t for t in df["threat"].dropna().unique().tolist() if t != ""]
    return sorted(found, key=lambda t: (THREAT_ORDER.index(t) if t in THREAT_ORDER else 99, t))


def attack_label(row: Any) -> str:
    """``pgd`` or ``pgd(steps=20)``: the attack with its non-default parameters."""
    params = str(row.get("attack_params") or "")
    return f"{row['attack']}({params})" if params else str(row["attack"])


def detector_label(value: Any) -> str:
    return str(value) if value not in (None, "") else "none"


def pivot(df: pd.DataFrame, threat: str) -> Table:
    """Rows model x detector, columns attack x eps, cells ``robust_acc / auc``."""
    sub = df[df["threat"] == threat].copy()
    sub["_attack"] = sub.apply(attack_label, axis=1)
    sub["_detector"] = sub["detector"].map(detector_label)
    for col in ("robust_acc", "auc", "clean_acc"):
        sub[col] = pd.to_numeric(sub[col], errors="coerce")
    cols = sorted({(a, float(e)) for a, e in zip(sub["_attack"], sub["eps"])})
    row_keys = sorted({(str(m), d) for m, d in zip(sub["model"], sub["_detector"])})
    means = sub.groupby(["model", "_detector", "_attack", "eps"])[["robust_acc", "auc"]].mean()
    clean = sub.groupby(["model", "_detector"])["clean_acc"].mean()
    header = ["model", "detector", "clean acc"] + [f"{a} eps={_eps(e)}" for a, e in cols]
    rows = []
    for model, det in row_keys:
        cells = [model, det, _num(clean.get((model, det), math.nan))]
        for attack, eps in cols:
            key = (model, det, attack, eps)
            cells.append(_pair(*means.loc[key]) if key in means.index else "")
        rows.append(cells)
    return Table(f"{threat}: robust accuracy / detection AUC", header, rows)


def _eps(eps: float) -> str:
    return f"{eps:.4g}"


def _num(value: float) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value:.2f}"


def _pair(robust_acc: float, auc: float) -> str:
    return f"{_num(robust_acc)} / {_num(auc)}"


def markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table (pipes in values escaped)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    out = [f"### {table.title}", "", line(table.header), line(["---"] * len(table.header))]
    out += [line(r) for r in table.rows]
    return "\n".join(out) + "\n"


def write_tables(df: pd.DataFrame, out: Path) -> List[Table]:
    """metrics.csv, then ``table_<threat>.csv`` and ``.md`` for each threat model."""
    atomic_write_csv(out / "metrics.csv", df)
    tables = []
    for threat in threats_in(df):
        table = pivot(df, threat)
        table.csv_name = f"table_{safe_name(threat)}.csv"
        table.md_name = f"table_{safe_name(threat)}.md"
        atomic_write_csv(out / table.csv_name, pd.DataFrame(table.rows, columns=table.header))
        atomic_write_text(out / table.md_name, markdown(table))
        tables.append(table)
    return tables


def frame_table(df: pd.DataFrame, title: str) -> Table:
    """Any small frame as a Table (for sanity checks)."""
    rows = [["" if _blank(v) else str(v) for v in rec] for rec in df.itertuples(index=False)]
    return Table(title, [str(c) for c in df.columns], rows)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
