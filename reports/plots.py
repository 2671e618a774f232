"""Plots: ROC curves, robust accuracy and detection AUC against eps, the feature space.

matplotlib is imported inside the functions and drawn through its Agg canvas
(``matplotlib.figure.Figure``), never through pyplot, so building a report
neither needs a display nor touches global plotting state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from robench.results import safe_name

from robench.reports.runs import ReportRun
from robench.worstcase import WORST_CASE

from robench.reports.tables import VERIFY, attack_label, attack_rows, detector_label, norm_name, threats_in

MAX_CLEAN_POINTS = 5000
MAX_ADV_POINTS = 1000


@dataclass
class Plot:
    """A PNG written into the report folder."""

    title: str
    path: Path
    caption: str = ""
    wide: bool = False  # spans the whole page width (multi-facet figures)


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", facecolor="white")
    return path


def _has_detector(value: Any) -> bool:
    return detector_label(value) != "none"


# -- ROC ---------------------------------------------------------------------------------

def roc_plots(run: ReportRun, out: Path, prefix: str = "") -> List[Plot]:
    """One figure per (model, threat, detector); one curve per (attack, eps).

    Negatives are the clean scores of correctly classified test points, positives the
    scores of the adversarial examples made from those same points.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    samples = run.samples
    if samples.empty or "adv_score" not in samples:
        return []
    samples = samples[samples["attack"] != VERIFY]  # verify cells score no examples
    labels = _cell_labels(run)
    plots = []
    keys = ["model", "threat", "detector"]
    for (model, threat, det), group in samples.groupby(keys, sort=True):
        if not _has_detector(det):
            continue
        fig = new_figure(6.0, 5.0)
        ax = fig.add_subplot()
        drawn = 0
        for cell_id, cell in _by_attack_eps(group, labels):
            ok = (cell["clean_pred"] == cell["label"]).to_numpy()
            neg = cell["clean_score"].to_numpy(float)[ok]
            pos = cell["adv_score"].to_numpy(float)[ok]
            neg, pos = neg[np.isfinite(neg)], pos[np.isfinite(pos)]
            if len(neg) == 0 or len(pos) == 0:
                continue
            y_true = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
            scores = np.r_[neg, pos]
            fpr, tpr, _ = roc_curve(y_true, scores)
            auc = roc_auc_score(y_true, scores)
            ax.plot(fpr, tpr, lw=1.8, label=f"{labels.get(cell_id, cell_id)} (AUC {auc:.3f})")
            drawn += 1
        if not drawn:
            continue
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (clean flagged)",
               ylabel="true positive rate (adversarial flagged)")
        ax.set_title(f"ROC: {model}, {threat}, detector {det}{_suffix(prefix)}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        name = f"roc_{safe_name(prefix + model)}_{safe_name(threat)}_{safe_name(det)}.png"
        plots.append(Plot(f"ROC {model} / {threat} / {det}{_suffix(prefix)}", save_figure(fig, out / name),
                          "Clean scores of correctly classified test points against the scores of "
                          "adversarial examples made from them."))
    return plots


def _suffix(prefix: str) -> str:
    return f" [{prefix.rstrip('_')}]" if prefix else ""


def _cell_labels(run: ReportRun) -> Dict[str, str]:
    """cell_id -> 'attack eps=E' (with parameters and objective when the cell folders say)."""
    cells = run.cells
    out: Dict[str, str] = {}
    for rec in cells.to_dict("records"):
        out[rec["cell_id"]] = f"{attack_label(rec)} {_eps_label(rec)}"
    return out


def _eps_label(row: Mapping[str, Any]) -> str:
    """``eps=0.3``, or ``unbounded`` for a minimal-perturbation attack (eps 0 is no budget)."""
    eps = float(row.get("eps") or 0)
    return f"eps={eps:.4g}" if eps > 0 else "unbounded"


def _by_attack_eps(group: pd.DataFrame, labels: Mapping[str, str]):
    """The group's cells ordered by attack then eps."""
    firsts = group.groupby("cell_id", sort=False)[["attack", "eps"]].first()
    for cell_id in firsts.sort_values(["attack", "eps"], kind="mergesort").index:
        yield cell_id, group[group["cell_id"] == cell_id]


# -- metrics against eps ---------------------------------------------------------------

LEGEND_SIZE = 9  # points: about 13 px on the page, where the figures show at about their own size


def _eps_rows(df: pd.DataFrame, metric: str, with_detector: bool) -> pd.DataFrame:
    """Rows with a finite ``metric`` and a bounded budget (an unbounded attack has no place on an eps axis)."""
    df = df.copy()
    df[metric] = pd.to_numeric(df[metric], errors="coerce")
    df = df[np.isfinite(df[metric]) & (pd.to_numeric(df["eps"], errors="coerce") > 0)]
    return df[df["detector"].map(_has_detector)] if with_detector else df


def versus_eps_plot(df: pd.DataFrame, metric: str, out: Path, name: str, ylabel: str,
                    with_detector: bool) -> Optional[Plot]:
    """One facet per threat model; one line per model x attack (x detector), the worst case bold."""
    df = _eps_rows(df, metric, with_detector)
    if df.empty:
        return None
    threats = threats_in(df)
    n_lines = df.groupby(["threat", "model", "attack", "detector"]).ngroups // len(threats)
    # One legend entry per line below each facet, one column: long attack labels never squeeze the axes.
    fig = new_figure(4.8 * len(threats) + 0.6, 4.4 + 0.24 * n_lines)
    axes = fig.subplots(1, len(threats), squeeze=False, sharey=True)[0]
    for ax, threat in zip(axes, threats):
        # gray- and black-box adversarials do not depend on the detector: one line serves all
        _lines(ax, df[df["threat"] == threat], metric, with_detector or threat == "white-box")
        _axes(ax, threat, df[df["threat"] == threat])
        ax.legend(fontsize=LEGEND_SIZE, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, frameon=False)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(f"{ylabel} vs eps")
    caption = ("Bold: the worst case per test point over the run's attacks of that budget. Mean over repeated "
               "cells; error bars: the 95% bootstrap interval from metrics.csv. Unbounded attacks (eps 0) are "
               "in the tables only.")
    if not with_detector:
        caption += " Gray- and black-box adversarial examples do not depend on the detector: one line each."
    return Plot(f"{ylabel} vs eps", save_figure(fig, out / name), caption, wide=len(threats) > 1)


def detection_plot(df: pd.DataFrame, out: Path, name: str = "detection_vs_eps.png") -> Optional[Plot]:
    """Per threat model, detection-aware robust accuracy at 5% FPR beside detection AUC, against eps."""
    metrics = (("det_robust_acc_fpr5", "det. robust acc @5% FPR"), ("auc", "detection AUC"))
    frames = [_eps_rows(df, m, True) for m, _ in metrics]
    if all(f.empty for f in frames):
        return None
    threats = threats_in(pd.concat(frames))
    n_lines = max(f.groupby(["threat", "model", "attack", "detector"]).ngroups for f in frames if len(f))
    fig = new_figure(11.0, len(threats) * max(3.6, 0.9 + 0.2 * n_lines / len(threats)))
    axes = fig.subplots(len(threats), 2, squeeze=False, sharex=True)
    for row, threat in zip(axes, threats):
        for ax, frame, (metric, label) in zip(row, frames, metrics):
            _lines(ax, frame[frame["threat"] == threat], metric, True)
            _axes(ax, threat, frame[frame["threat"] == threat])
            ax.set_ylabel(label)
        handles, labels = row[0].get_legend_handles_labels()
        if not handles:
            handles, labels = row[1].get_legend_handles_labels()
        row[1].legend(handles, labels, fontsize=LEGEND_SIZE, loc="center left", bbox_to_anchor=(1.02, 0.5),
                      frameon=False)
    fig.suptitle("Detection-aware robust accuracy and AUC vs eps")
    return Plot("Detection-aware robust accuracy and detection AUC vs eps", save_figure(fig, out / name),
                "Left: fraction of test points classified correctly OR flagged at the detector's 5%-FPR "
                "threshold; right: ROC AUC of clean against adversarial scores. Bold: the worst case over the "
                "run's attacks. Error bars: 95% bootstrap interval where metrics.csv has one.", wide=True)


def _axes(ax, threat: str, df: pd.DataFrame) -> None:
    ax.set_title(threat)
    ax.set_xlabel(f"eps ({_norms(df)}pixels in [0, 1])")
    ax.grid(alpha=0.3)
    ax.set_ylim(-0.02, 1.02)


def _lines(ax, df: pd.DataFrame, metric: str, split_detector: bool) -> None:
    df = df.assign(_attack=df.apply(_line_attack, axis=1), _det=df["detector"].map(detector_label),
                   _worst=(df["attack"] != WORST_CASE).astype(int))
    keys = ["model", "_worst", "_attack"] + (["_det"] if split_detector else [])
    lo, hi = f"{metric}_lo", f"{metric}_hi"
    for key, group in df.groupby(keys, sort=True):
        g = group.groupby("eps")[[c for c in (metric, lo, hi) if c in group]].mean(numeric_only=True)
        label = " \u00b7 ".join(str(k) for i, k in enumerate(key) if i != 1)
        yerr = None
        if lo in g and hi in g and np.isfinite(g[[lo, hi]].to_numpy(float)).all():
            yerr = np.clip(np.vstack([g[metric] - g[lo], g[hi] - g[metric]]).astype(float), 0, None)
        bold = key[1] == 0
        ax.errorbar(g.index, g[metric], yerr=yerr, marker="s" if bold else "o", ms=6 if bold else 4,
                    lw=3.2 if bold else 1.3, capsize=3, elinewidth=0.8, alpha=1.0 if bold else 0.8,
                    zorder=5 if bold else 2, label=label)


def _line_attack(row: Any) -> str:
    """A line's attack: ``worst case`` (with its norm: budgets of two norms are two lines), else the attack."""
    if row["attack"] == WORST_CASE:
        return f"worst case ({norm_name(row.get('norm'))})"
    return attack_label(row)


def _norms(df: pd.DataFrame) -> str:
    norms = sorted({norm_name(n) for n in df.get("norm", pd.Series(dtype=str)) if str(n) not in ("", "nan")})
    return f"{'/'.join(norms)} budget, " if norms else ""


# -- feature space -----------------------------------------------------------------------

def feature_plots(run: ReportRun, out: Path, chosen: Mapping[str, str], prefix: str = "") -> List[Plot]:
    """Clean test features coloured by class (2-D as they are, else PCA), adversarial points on top."""
    plots = []
    for model in run.run.feature_models():
        feats = run.run.features(model)
        if len(feats.f) == 0:
            continue
        cell_id = chosen.get(model) or default_cell(run, model)
        adv, adv_pred, caption = _adversarial(run, cell_id)
        fig = new_figure(6.4, 5.6)
        ax = fig.add_subplot()
        method = _draw_features(ax, feats.f, feats.y, adv, adv_pred)
        ax.set_title(f"Feature space: {model}{_suffix(prefix)}" + (f"\n{caption}" if caption else ""),
                     fontsize=10)
        name = f"features_{safe_name(prefix + model)}.png"
        plots.append(Plot(f"Feature space {model}{_suffix(prefix)}", save_figure(fig, out / name),
                          f"{method}; dots: clean test points coloured by true class; "
                          f"x: adversarial examples coloured by their predicted class. {caption}"))
    return plots


def default_cell(run: ReportRun, model: str) -> Optional[str]:
    """The most telling cell of a model: largest eps, gray-box first, highest success rate."""
    rows = run.results[run.results["model"] == model].copy()
    if rows.empty:
        return None
    rows["_threat"] = rows["threat"].map({"gray-box": 0, "white-box": 1, "black-box": 2}).fillna(3)
    rows["_success"] = -pd.to_numeric(rows.get("attack_success_rate"), errors="coerce").fillna(0)
    rows["_eps"] = -pd.to_numeric(rows["eps"], errors="coerce").fillna(0)
    rows = rows.sort_values(["_eps", "_threat", "_success", "attack", "detector"], kind="mergesort")
    for _, row in rows.iterrows():
        cell_id = run.cell_of(row)
        if cell_id and run.run.has_adv_features(cell_id):
            return cell_id
    return None


def _adversarial(run: ReportRun, cell_id: Optional[str]
                 ) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], str]:
    if cell_id is None:
        return None, None, ""
    adv = run.run.adv_features(cell_id)
    samples = run.run.samples(cell_id)
    row = run.run.cell_row(cell_id)
    caption = (f"adversarial: {attack_label(row)} {_eps_label(row)}, {row['threat']}, "
               f"detector {detector_label(row.get('detector'))}")
    return adv, samples["adv_pred"].to_numpy(), caption


def _draw_features(ax, f: np.ndarray, y: np.ndarray, adv: Optional[np.ndarray],
                   adv_pred: Optional[np.ndarray]) -> str:
    from matplotlib.lines import Line2D

    rng = np.random.default_rng(0)  # a fixed subsample, so the figure is the same every time
    keep = np.sort(rng.permutation(len(f))[:MAX_CLEAN_POINTS])
    project, method = _projection(f)
    xy = project(f[keep])
    classes = np.unique(y)
    cmap = _class_colors(max(int(classes.max()) + 1 if len(classes) else 1, 10))
    ax.scatter(xy[:, 0], xy[:, 1], s=6, c=[cmap[int(c)] for c in y[keep]], alpha=0.55, linewidths=0)
    handles = [Line2D([], [], ls="", marker="o", ms=5, color=cmap[int(c)], label=f"class {c}")
               for c in classes]
    if adv is not None and len(adv):
        take = np.sort(rng.permutation(len(adv))[:MAX_ADV_POINTS])
        axy = project(adv[take])
        ax.scatter(axy[:, 0], axy[:, 1], s=28, marker="x", linewidths=1.2,
                   c=[cmap[int(c) % len(cmap)] for c in adv_pred[take]])
        handles.append(Line2D([], [], ls="", marker="x", ms=7, color="0.2",
                              label="adversarial\n(colour = predicted class)"))
    if method == "raw 2-D features":
        ax.set_aspect("equal", adjustable="datalim")
        ax.set(xlabel="feature 1", ylabel="feature 2")
    else:
        ax.set(xlabel="PC 1", ylabel="PC 2")
    ax.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(alpha=0.25)
    return method


def _projection(f: np.ndarray):
    if f.shape[1] == 2:
        return (lambda a: np.asarray(a, dtype=float)), "raw 2-D features"
    if f.shape[1] == 1:
        return (lambda a: np.c_[a[:, 0], np.zeros(len(a))]), "1-D features"
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=0).fit(f)
    share = pca.explained_variance_ratio_.sum()
    return pca.transform, f"PCA of {f.shape[1]}-D features ({share:.0%} of variance)"


def _class_colors(n: int) -> List[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def all_plots(runs: Sequence[ReportRun], metrics: pd.DataFrame, out: Path,
              feature_cells: Mapping[str, str]) -> Dict[str, List[Plot]]:
    """Every plot of the report but the Verification section's, grouped under section titles."""
    groups: Dict[str, List[Plot]] = {"Robustness and detection vs eps": [], "ROC curves": [],
                                     "Feature space": []}
    metrics = attack_rows(metrics)  # verification's bounds have their own figure
    eps_plots = [versus_eps_plot(metrics, "robust_acc", out, "robust_accuracy_vs_eps.png", "robust accuracy",
                                 False), detection_plot(metrics, out)]
    groups["Robustness and detection vs eps"] += [p for p in eps_plots if p is not None]
    for run in runs:
        prefix = f"{run.name}_" if len(runs) > 1 else ""
        groups["ROC curves"] += roc_plots(run, out, prefix)
        groups["Feature space"] += feature_plots(run, out, feature_cells, prefix)
    return {k: v for k, v in groups.items() if v}
