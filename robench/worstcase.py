"""The worst case over a run's attacks: one ``worst-case`` results row per budget.

The rows of a group share the budget and everything but the attack: (model, defense,
dataset, arch, norm, eps, threat, detector, seed), with a bounded budget (eps > 0, norm
Linf, L2 or L1; unbounded attacks such as ``cw-l2`` at eps 0 have no common budget to
share). Per test point (matched by ``index`` across the group's cells) the worst case
takes the example worst for the defender:

1. a misclassified example (``adv_pred != label``) before a correctly classified one;
2. among those, the lowest detector score: a point is flagged when its score is above a
   threshold, so the least suspicious misclassified example is unflagged at every
   threshold where any misclassified example is;
3. ties to the first member in order: the order a ``--cascade`` chain ran them (its cells
   carry the examples of earlier attacks, which found them), then attack, parameters,
   objective and cell id.

So the worst case loses a point exactly when some member lost it (misclassified, and with
a detector not flagged): its robust accuracy and detection-aware robust accuracy are at
most every member's. The chosen records go through :func:`robench.metrics.cell_metrics`
like any cell's; the flags in the samples stand in for the thresholds, which the samples
do not hold (``fpr_at_fpr*``, a property of the clean scores, is copied from the members).

Pure functions on DataFrames (no torch), called by ``RunDir.finalize`` and by the report.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from robench.errors import RobenchError
from robench.metrics import cell_metrics
from robench.io import order_columns, sort_rows
from robench.schema import CELL_KEY, ID_COLUMNS, RESULT_COLUMNS, VERIFY, WORST_CASE

BOUNDED_NORMS = ("linf", "l2", "l1")
GROUP_COLUMNS: List[str] = ["model", "defense", "dataset", "arch", "norm", "eps", "threat", "detector", "seed"]
LOST_AT = "flagged_fpr5"  # the white-box attacker's threshold: a point is lost misclassified and under it
_FPR_TAGS = ("fpr1", "fpr5")
_TOLERANCE = 1e-9  # the worst case and its members are counts over the same points: exact


def bounded(results: pd.DataFrame) -> pd.Series:
    """Which rows are members of a worst case: eps > 0, a bounded norm, not a worst case themselves."""
    eps = pd.to_numeric(results.get("eps"), errors="coerce")
    norm = results.get("norm", pd.Series("", index=results.index)).map(lambda n: str(n).strip().lower())
    return (eps > 0) & norm.isin(BOUNDED_NORMS) & ~results["attack"].isin([WORST_CASE, VERIFY])


def worst_case_rows(results: pd.DataFrame, samples: pd.DataFrame, seed: Optional[int] = None, *,
                    cells: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """One ``worst-case`` row per group of bounded results rows (rule in the module docstring).

    Args:
        results: results rows (RESULT_COLUMNS); with a ``cell_id`` column when known
            (``RunDir.finalize`` has it from the cell folders).
        samples: the per-sample records of those cells (SAMPLE_COLUMNS, ``cell_id`` included).
        seed: seed of the bootstrap intervals; None: each group's own ``seed`` column (the
            run's ``--seed``, which its cells' intervals used), else 0.
        cells: ``RunDir.cells()`` (cell_id and the id columns), to find a results row's cell
            when ``results`` has no ``cell_id``; without either, rows are matched to samples
            on (model, attack, eps, threat, detector).

    Returns:
        The worst-case rows, RESULT_COLUMNS first, sorted by the id columns (empty when no
        row has a bounded budget).

    Raises:
        RobenchError: a member's cell cannot be found or has no per-sample records.
    """
    results = results.reset_index(drop=True)
    members = results[bounded(results)] if len(results) else results
    out = []
    if len(members):
        members = members.assign(cell_id=cell_ids_of(members, samples, cells))
        by_cell = {c: g for c, g in samples.groupby("cell_id", sort=False)}
        for _, group in members.groupby([_text_key(members[c]) for c in GROUP_COLUMNS], sort=True):
            out.append(_worst_case(_in_order(group), by_cell, seed))
    df = pd.DataFrame(out)
    return sort_rows(order_columns(df, RESULT_COLUMNS), ID_COLUMNS) if out else df


def cell_ids_of(results: pd.DataFrame, samples: pd.DataFrame,
                cells: Optional[pd.DataFrame] = None) -> List[str]:
    """The cell_id of each results row: its own column, else through ``cells``, else through the samples."""
    if "cell_id" in results and results["cell_id"].map(lambda c: str(c or "") not in ("", "nan")).all():
        return results["cell_id"].astype(str).tolist()
    if cells is not None and len(cells):
        table, columns = cells, ID_COLUMNS
    else:
        table, columns = samples.drop_duplicates("cell_id"), CELL_KEY
    lookup: Dict[Tuple[str, ...], List[str]] = {}
    for key, cell_id in zip(_row_keys(table, columns), table["cell_id"].astype(str)):
        lookup.setdefault(key, []).append(cell_id)
    out = []
    for key, (_, row) in zip(_row_keys(results, columns), results.iterrows()):
        found = sorted(set(lookup.get(key, [])))
        if len(found) != 1:
            what = "no cell" if not found else f"{len(found)} cells"
            raise RobenchError(f"worst case: {what} for the results row {_describe(row)} "
                               f"({row['attack']}); the run's cells folder is needed to match them")
        out.append(found[0])
    return out


def _worst_case(members: pd.DataFrame, by_cell: Dict[str, pd.DataFrame], seed: Optional[int]) -> Dict[str, Any]:
    """The worst-case row of one group (members already in tie-break order)."""
    parts = []
    for rank, (_, member) in enumerate(members.iterrows()):
        records = by_cell.get(member["cell_id"])
        if records is None or records.empty:
            raise RobenchError(f"worst case of {_describe(member)}: no per-sample records for "
                               f"{member['attack']} (cell {member['cell_id']})")
        parts.append(records.assign(_member=rank))
    chosen = choose_worst(pd.concat(parts, ignore_index=True))
    first = members.iloc[0]
    row: Dict[str, Any] = {c: first[c] for c in GROUP_COLUMNS}
    row.update(attack=WORST_CASE, objective="", cascade_after="",
               attack_params=";".join(sorted(_spec(m) for _, m in members.iterrows())))
    own = _number(first["seed"])
    row.update(_metrics(chosen, members, seed if seed is not None else int(own) if math.isfinite(own) else 0))
    passes = _numbers(members, "passes_per_sample")
    row["passes_per_sample"] = float(passes.sum()) if passes.notna().all() else math.nan
    row["objective_wins"] = _wins(chosen, members)
    return row


def choose_worst(records: pd.DataFrame) -> pd.DataFrame:
    """Per ``index``, the record worst for the defender among those of every member.

    Args:
        records: the members' sample records, with ``_member`` (0 = first in tie-break order).

    Returns:
        One record per index, in the order the points first appear (the first member's
        order, so a bootstrap over them resamples as that cell's did), ``_member`` saying
        whose it is.
    """
    records = records.reset_index(drop=True)
    first_seen = {i: k for k, i in enumerate(records["index"].drop_duplicates())}
    key = pd.DataFrame({
        "index": records["index"],
        "right": records["adv_pred"].to_numpy() == records["label"].to_numpy(),
        # no score (no detector): every record ties on it, so the member order decides
        "score": pd.to_numeric(records["adv_score"], errors="coerce").fillna(np.inf),
        "member": records["_member"],
    })
    key["seen"] = records["index"].map(first_seen)
    order = key.sort_values(["seen", "right", "score", "member"], kind="mergesort").index
    return records.loc[order].drop_duplicates("index", keep="first").reset_index(drop=True)


def _metrics(chosen: pd.DataFrame, members: pd.DataFrame, seed: int) -> Dict[str, float]:
    clean = pd.to_numeric(chosen["clean_score"], errors="coerce").to_numpy(float)
    adv = pd.to_numeric(chosen["adv_score"], errors="coerce").to_numpy(float)
    scored = _has_detector(members.iloc[0]["detector"]) and not (np.isnan(clean).any() or np.isnan(adv).any())
    out = cell_metrics(y=chosen["label"], clean_pred=chosen["clean_pred"], adv_pred=chosen["adv_pred"],
                       clean_score=clean if scored else None, adv_score=adv if scored else None,
                       linf=chosen["linf"], l2=chosen["l2"], seed=seed)
    right = chosen["adv_pred"].to_numpy() == chosen["label"].to_numpy()
    successful = (chosen["clean_pred"].to_numpy() == chosen["label"].to_numpy()) & ~right
    for tag in _FPR_TAGS:
        flags = _flags(chosen[f"flagged_{tag}"])
        # defined where every member's is: no number here that a member could not have
        if _all_finite(members, f"det_robust_acc_{tag}"):
            out[f"det_robust_acc_{tag}"] = float(np.mean(right | flags))
        if _all_finite(members, f"tpr_at_{tag}") and successful.any():
            out[f"tpr_at_{tag}"] = float(np.mean(flags[successful]))
        out[f"fpr_at_{tag}"] = float(_numbers(members, f"fpr_at_{tag}").iloc[0])
    return out


def _wins(chosen: pd.DataFrame, members: pd.DataFrame) -> str:
    """``fgsm:3;pgd:41``: whose example each lost point got (zeros included: that member never won)."""
    lost = chosen["adv_pred"].to_numpy() != chosen["label"].to_numpy()
    if _has_detector(members.iloc[0]["detector"]):
        lost &= ~_flags(chosen[LOST_AT])
    counts = np.bincount(chosen["_member"].to_numpy(int)[lost], minlength=len(members))
    return ";".join(f"{label}:{int(k)}" for label, k in zip(_labels(members), counts))


def _labels(members: pd.DataFrame) -> List[str]:
    """The members' names: the attack, with its parameters where two share it, else the cell id."""
    attacks = members["attack"].astype(str).tolist()
    specs = [f"{a}({p})" if p else a for a, p in zip(attacks, members["attack_params"].fillna("").astype(str))]
    labels = [s if attacks.count(a) > 1 else a for a, s in zip(attacks, specs)]
    return [lab if labels.count(lab) == 1 else str(c) for lab, c in zip(labels, members["cell_id"])]


def _in_order(group: pd.DataFrame) -> pd.DataFrame:
    """Members in tie-break order: position in a cascade chain, then attack, parameters, objective, cell."""
    after = group.get("cascade_after", pd.Series("", index=group.index))
    key = pd.DataFrame({
        "chain": after.map(lambda a: 0 if _blank(a) else len(str(a).split(";"))),
        **{c: _text_key(group.get(c, pd.Series("", index=group.index)))
           for c in ("attack", "attack_params", "objective", "cell_id")},
    })
    return group.loc[key.sort_values(list(key.columns), kind="mergesort").index]


# -- checks for the sanity report ---------------------------------------------------------

def worst_case_problems(results: pd.DataFrame) -> List[str]:
    """What is wrong with the ``worst-case`` rows of ``results``; empty when nothing is.

    A member with a lower robust accuracy (or detection-aware robust accuracy) than its
    worst case is a single attack stronger than the worst case over all of them: a bug in
    the computation or in the records. Members attacked on different numbers of points
    make a worst case that can be weaker than a member.
    """
    problems = []
    if results.empty or "attack" not in results:
        return problems
    worst = results[results["attack"] == WORST_CASE]
    members = results[bounded(results)]
    member_keys = _row_keys(members, GROUP_COLUMNS)
    for key, (_, row) in zip(_row_keys(worst, GROUP_COLUMNS), worst.iterrows()):
        group = members[[k == key for k in member_keys]]
        problems += _row_problems(row, group)
    return problems


def _row_problems(worst: pd.Series, group: pd.DataFrame) -> List[str]:
    where = _describe(worst)
    out = []
    if group.empty:
        return [f"{where}: a worst-case row without any bounded attack of that budget"]
    sizes = sorted({int(n) for n in _numbers(group, "n").dropna()})
    if len(sizes) > 1:
        out.append(f"{where}: the attacks ran on different numbers of points ({', '.join(map(str, sizes))}), "
                   f"so the worst case can be weaker than one of them")
    for metric in ("robust_acc", "det_robust_acc_fpr1", "det_robust_acc_fpr5"):
        w = _number(worst.get(metric))
        for _, member in group.iterrows():
            m = _number(member.get(metric))
            if math.isfinite(w) and math.isfinite(m) and m < w - _TOLERANCE:
                out.append(f"{where}: {member['attack']} alone has {metric} {m:.4f}, below the worst "
                           f"case's {w:.4f} (a single attack stronger than the worst case: a bug)")
    return out


def worst_case_checks(results: pd.DataFrame) -> List[Dict[str, object]]:
    """Sanity rows (model, check, flagged, evidence), one per model that has worst-case rows."""
    rows: List[Dict[str, object]] = []
    if results.empty or "attack" not in results:
        return rows
    for model, df in results.groupby("model", sort=True):
        n_worst = int((df["attack"] == WORST_CASE).sum())
        if not n_worst:
            continue
        problems = worst_case_problems(df)
        rows.append({"model": model, "check": "worst case at least as strong as every attack",
                     "flagged": bool(problems),
                     "evidence": "; ".join(problems) or f"{n_worst} worst-case rows checked against their attacks"})
    return rows


# -- small helpers ------------------------------------------------------------------------

def _spec(member: pd.Series) -> str:
    params = "" if _blank(member.get("attack_params")) else str(member["attack_params"])
    return f"{member['attack']}:{params}" if params else str(member["attack"])


def _describe(row: pd.Series) -> str:
    eps = _number(row.get("eps"))
    return (f"{row.get('model')} {row.get('threat')} {row.get('norm')} eps {eps:g} "
            f"detector {row.get('detector') or 'none'}")


def _has_detector(value: Any) -> bool:
    return not _blank(value) and str(value) != "none"


def _flags(col: pd.Series) -> np.ndarray:
    """Flags as bools, whether read back from CSV as bools or as text."""
    return col.map(lambda v: str(v).strip().lower() in ("true", "1", "1.0")).to_numpy(bool)


def _numbers(df: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats (NaN where blank or missing)."""
    if column not in df:
        return pd.Series(math.nan, index=df.index, dtype=float)
    return pd.to_numeric(df[column], errors="coerce").astype(float)


def _all_finite(df: pd.DataFrame, column: str) -> bool:
    values = _numbers(df, column).to_numpy()
    return len(values) > 0 and bool(np.isfinite(values).all())


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value) in ("", "nan")


def _key(value: Any) -> str:
    """A value as comparable text: blanks alike, 0.3 from JSON equal to 0.3 from CSV, 0 equal to 0.0."""
    if _blank(value):
        return ""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        return repr(float(value))
    return str(value)


def _text_key(col: pd.Series) -> pd.Series:
    return col.map(_key)


def _row_keys(df: pd.DataFrame, columns: Sequence[str]) -> List[Tuple[str, ...]]:
    cols = [df[c].map(_key) if c in df else pd.Series("", index=df.index) for c in columns]
    return list(zip(*cols)) if cols and len(df) else []


__all__ = ["WORST_CASE", "GROUP_COLUMNS", "bounded", "worst_case_rows", "cell_ids_of", "choose_worst",
           "worst_case_problems", "worst_case_checks"]
