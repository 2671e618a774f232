r"""``table_<threat>.tex``: a threat's cell table as a booktabs tabular, ready to ``\input``.

Written by pandas' LaTeX writer (``DataFrame.to_latex``: ``\toprule``, ``\midrule``,
``\bottomrule``; the document needs ``\usepackage{booktabs}``). Intervals are
``value $\pm$ half-width``, the half-width being the LARGER side of the 95% percentile
bootstrap interval, so the symmetric form never shows less uncertainty than there is.
Text from the run directories is escaped; the only LaTeX markup is the writer's own.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from robench.results import atomic_write_text
from robench.reports.tables import (
    CELL_COLUMNS, CELL_LEGEND, DASH, attack_rows, cell_frame, cell_rows, spans_runs, table_stem, threats_in,
)

_SPECIAL = re.compile(r"([\\&%$#_{}~^])")
_REPLACE = {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
TEX_HEADER = {"robust acc [95% CI]": r"robust acc", "det. robust acc @5% FPR": r"det.\ robust acc @5\% FPR",
              "AUC [95% CI]": "AUC", "passes/point": "passes/point"}


def escape(text: Any) -> str:
    """Plain text as LaTeX text (``gm_v2 & co`` -> ``gm\\_v2 \\& co``); the en dash stays one."""
    out = _SPECIAL.sub(lambda m: _REPLACE.get(m.group(1), "\\" + m.group(1)), str(text))
    return out.replace(DASH, "--")


def plus_minus(value: Any, lo: Any, hi: Any) -> str:
    """``0.22 $\\pm$ 0.12`` (the larger side of [lo, hi]); the value alone without an interval."""
    v, a, b = (_float(x) for x in (value, lo, hi))
    if not math.isfinite(v):
        return "--"
    if not (math.isfinite(a) and math.isfinite(b)):
        return f"{v:.2f}"
    return f"{v:.2f} $\\pm$ {max(v - a, b - v, 0.0):.2f}"


def cell_latex(frame: pd.DataFrame, threat: str, with_run: bool = False) -> str:
    """The tabular of :func:`robench.reports.tables.cell_frame`; worst-case rows in bold."""
    header = (["run"] if with_run else []) + CELL_COLUMNS
    text_cols = len(header) - 4
    rows = []
    kinds = frame["_kind"].tolist() if "_kind" in frame else []
    for kind, cells in zip(kinds, cell_rows(frame, plus_minus, with_run)):
        out = [escape(c) for c in cells[:text_cols]] + [c.replace(DASH, "--") for c in cells[text_cols:]]
        if kind == "worst":
            out = [rf"\textbf{{{c}}}" for c in out]
        rows.append(out)
    names = [escape(h) if h not in TEX_HEADER else TEX_HEADER[h] for h in header]
    table = pd.DataFrame(rows, columns=names)
    body = table.to_latex(index=False, escape=False, column_format="l" * text_cols + "r" * 4)
    notes = [f"% robench: {threat} threat model, one row per result cell (\\input needs booktabs).",
             "% " + CELL_LEGEND.replace("[lo, hi]: 95% bootstrap interval.",
                                        "$\\pm$: the larger side of the 95% bootstrap interval."),
             "% Unbounded attacks: their median perturbation of the successful examples."]
    return "\n".join(notes) + "\n" + body


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def write_latex_tables(metrics: pd.DataFrame, out: Path) -> None:
    """``table_<threat>.tex`` per threat, beside the csv and md of :func:`~robench.reports.tables.write_tables`."""
    df, with_run = attack_rows(metrics), spans_runs(metrics)
    for threat in threats_in(df):
        atomic_write_text(out / f"{table_stem(threat)}.tex", cell_latex(cell_frame(df, threat), threat, with_run))
