"""verification_vs_eps.png: robust accuracy against eps between the attacks and verification.

One facet per (run, model) and question (robust accuracy; detection-aware robust
accuracy at 5% FPR): the worst case over the run's attacks per threat model (an
upper bound, triangles down), the exact and the certified robust accuracy (lower
bounds, triangles up), and the band between the tightest of each shaded: the
truth lies in it. A budget with missed points is ringed in red.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from robench.reports.plots import Plot, new_figure, save_figure
from robench.reports.tables import THREAT_ORDER

THREAT_COLORS = {"gray-box": "#1f77b4", "white-box": "#d62728", "black-box": "#2ca02c"}
BAND_COLOR = "#f2a93b"
FLAG_COLOR = "#cf222e"
CAPTION = ("Triangles down: the worst case over the run's attacks per threat model (the lowest over its "
           "detectors), an upper bound on the true value; triangles up: verification, a lower bound (exact: "
           "proven robust by mixed-integer programming; certified: the best CROWN/IBP bound). The truth lies "
           "in the shaded band between the tightest of each. Red rings: the red rows of the table (points proven "
           "breakable that every attack with the verifier's knowledge missed, or attack successes on points "
           "proven robust).")


def verification_plot(frame: pd.DataFrame, questions: Sequence[Any], out: Path,
                      name: str = "verification_vs_eps.png") -> Optional[Plot]:
    """The figure of :func:`robench.reports.verification.verification_frame`, one column per question
    (``verification.QUESTIONS``: ``.metric``, ``.label``) the frame has; None without rows."""
    if frame.empty:
        return None
    facets: List[Tuple[str, str]] = list(dict.fromkeys(zip(frame["run"], frame["model"])))
    questions = [q for q in questions if (frame["question"] == q.metric).any()]
    with_run = frame["run"].nunique() > 1
    fig = new_figure(5.6 * len(questions) + 0.6, 4.9 * len(facets) + 0.4)
    axes = fig.subplots(len(facets), len(questions), squeeze=False, sharey=True)
    for row_axes, (run, model) in zip(axes, facets):
        mine = frame[(frame["run"] == run) & (frame["model"] == model)]
        for ax, q in zip(row_axes, questions):
            _draw(ax, mine[mine["question"] == q.metric])
            ax.set_title(f"{model}{f' [{run}]' if with_run else ''}: {q.label}", fontsize=10)
        row_axes[0].set_ylabel("fraction of test points")
    fig.suptitle("Robust accuracy vs eps: attacks (upper bound) and verification (lower bound)")
    return Plot("Verified bounds vs eps", save_figure(fig, out / name), CAPTION, wide=len(questions) > 1)


def _draw(ax, rows: pd.DataFrame) -> None:
    eps_max = float(rows["eps"].max()) if len(rows) else 1.0
    ax.set(xlim=(0, eps_max * 1.15), ylim=(-0.02, 1.02), xlabel="eps (Linf budget, pixels in [0, 1])")
    ax.grid(alpha=0.3)
    if rows.empty:
        ax.text(0.5, 0.5, "not verified", ha="center", va="center", transform=ax.transAxes, color="0.4")
        return
    _band(ax, rows, eps_max)
    _upper_lines(ax, rows)
    _lower_lines(ax, rows)
    _flags(ax, rows)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=1, frameon=False)


def _upper_lines(ax, rows: pd.DataFrame) -> None:
    found = [t for t in rows["threat"].unique() if t]
    for threat in sorted(found, key=lambda t: (THREAT_ORDER.index(t) if t in THREAT_ORDER else 99, t)):
        line = rows[rows["threat"] == threat].groupby("eps")["upper_bound"].min().dropna()
        ax.plot(line.index, line.to_numpy(), marker="v", ms=8, lw=2.2, color=THREAT_COLORS.get(threat, "0.35"),
                label=f"worst-case attack, {threat} (upper bound)", zorder=4)


def _lower_lines(ax, rows: pd.DataFrame) -> None:
    per_eps = rows.groupby("eps")[["exact", "certified"]].first()  # one verify cell per (eps, question)
    exact, certified = per_eps["exact"].dropna(), per_eps["certified"].dropna()
    if len(exact):
        ax.plot(exact.index, exact.to_numpy(), marker="^", ms=8, lw=2.2, color="black",
                label="exact, MILP (lower bound)", zorder=5)
    if len(certified):
        methods = ", ".join(sorted(set(rows["certified_method"]) - {""}))
        ax.plot(certified.index, certified.to_numpy(), marker="^", ms=7, lw=1.8, ls="--", color="0.45",
                label=f"certified, {methods} (lower bound)", zorder=5)


def _band(ax, rows: pd.DataFrame, eps_max: float) -> None:
    """Shade between the best lower bound and the tightest upper bound, where both are over the same points."""
    same = rows[~(np.isfinite(rows["n_attack"]) & (rows["n_attack"] != rows["n_verify"]))]
    band = pd.DataFrame({"lo": same.groupby("eps")["lower_bound"].max(),
                         "hi": same.groupby("eps")["upper_bound"].min()}).dropna()
    if band.empty:
        return
    label = "the truth lies here"
    if len(band) > 1:
        ax.fill_between(band.index, band["lo"], band["hi"], color=BAND_COLOR, alpha=0.3, lw=0, label=label)
    else:  # one budget: a bar, since a band over a single eps has no width
        ax.bar(band.index, band["hi"] - band["lo"], bottom=band["lo"], width=0.08 * eps_max, color=BAND_COLOR,
               alpha=0.45, label=label, zorder=1)


def _flags(ax, rows: pd.DataFrame) -> None:
    """Ring every flagged upper bound (marked in its threat's colour: a line shows only the lowest of a
    threat's detectors) and list the findings in one box, where robust accuracy rarely is (top right)."""
    flagged = rows[rows["flagged"].astype(bool)]
    if flagged.empty:
        return
    lines = []
    for _, r in flagged.sort_values("eps", kind="mergesort").iterrows():
        y = r["upper_bound"] if math.isfinite(r["upper_bound"]) else r["lower_bound"]
        ax.scatter([r["eps"]], [y], s=260, facecolors="none", edgecolors=FLAG_COLOR, linewidths=2.2, zorder=6)
        ax.scatter([r["eps"]], [y], s=36, marker="v", color=THREAT_COLORS.get(r["threat"], "0.35"), zorder=6)
        lines.append(f"eps {r['eps']:.4g}, {r['threat']} ({r['detector']}): " + ", ".join(_findings(r)))
    ax.text(0.98, 0.98, "\n".join(lines), transform=ax.transAxes, ha="right", va="top", fontsize=7.5,
            color=FLAG_COLOR, zorder=7, bbox={"facecolor": "white", "edgecolor": FLAG_COLOR, "alpha": 0.9})


def _findings(r: pd.Series) -> List[str]:
    out = [f"{r['missed']:.0f} missed"] if r["missed"] > 0 else []
    return out + ([f"{r['contradicted']:.0f} contradicted"] if r["contradicted"] > 0 else [])
