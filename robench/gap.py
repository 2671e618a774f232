"""The evaluation gap: how far a run's attack numbers are from the verified truth.

When a run directory has both attack cells and ``robench verify`` cells for a
(model, eps), every ``worst-case`` row of that (model, Linf eps) gets:

* ``exact_robust_acc``: the exact robust accuracy (MILP; undecided points count as
  not robust, so it is a lower bound when any are left) from the ``exact`` cell
  without a detector, and ``certified_robust_acc``, the best certified lower bound
  of the ``crown`` / ``crown-ibp`` / ``ibp`` cells;
* ``missed``: points that verification proved NOT robust although every attack of
  that worst case left them correctly classified (gradient masking, or a weak attack);
* ``contradicted``: points an attack misclassified although verification proved them
  robust (a bug in one of the two);
* for rows with the ``gm-likelihood`` detector, the same at 5% FPR against the
  detection-aware ``exact`` cell: ``exact_det_robust_acc_fpr5``, ``missed_det_fpr5``,
  ``contradicted_det_fpr5``.

The attack's worst case is an upper bound, verification a lower bound: the
truth lies between, and ``missed`` is the strongest gradient-masking check there is.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import pandas as pd

from robench.schema import VERIFY, WORST_CASE

GAP_COLUMNS = ("exact_robust_acc", "certified_robust_acc", "missed", "contradicted",
               "exact_det_robust_acc_fpr5", "missed_det_fpr5", "contradicted_det_fpr5")


def add_verification_gap(results: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """``results`` (with ``cell_id`` on cell rows) with the gap columns filled on worst-case rows."""
    if results.empty or not (results["attack"] == VERIFY).any():
        return results
    results = results.copy()
    verify = results[results["attack"] == VERIFY]
    by_cell = {c: g.set_index("index") for c, g in samples.groupby("cell_id", sort=False)}
    for i, row in results[results["attack"] == WORST_CASE].iterrows():
        if str(row.get("norm", "")).lower() != "linf":
            continue
        same = verify[(verify["model"] == row["model"]) & np.isclose(verify["eps"].astype(float), float(row["eps"]))]
        if same.empty:
            continue
        members = _members(results, row)
        for key, value in _gap(same, members, by_cell, str(row["detector"])).items():
            results.loc[i, key] = value
    return results


def _members(results: pd.DataFrame, row: pd.Series) -> pd.DataFrame:
    keys = ("model", "norm", "threat", "detector")
    mask = ~results["attack"].isin([WORST_CASE, VERIFY]) & np.isclose(results["eps"].astype(float), float(row["eps"]))
    for key in keys:
        mask &= results[key].astype(str) == str(row[key])
    return results[mask]


def _gap(verify: pd.DataFrame, members: pd.DataFrame, by_cell: Dict[str, pd.DataFrame],
         detector: str) -> Dict[str, float]:
    out: Dict[str, float] = {}
    plain = verify[verify["detector"] == "none"]
    exact = plain[plain["objective"] == "exact"]
    certified = plain[plain["objective"] != "exact"]
    if len(certified):
        out["certified_robust_acc"] = float(certified["robust_acc"].max())
    lost = _lost(members, by_cell, with_detector=False)
    if len(exact):
        status = _status(exact.iloc[0], by_cell)
        out["exact_robust_acc"] = float(exact.iloc[0]["robust_acc"])
        out.update(_counts(status, lost, ""))
    det = verify[(verify["detector"] == "gm-likelihood") & (verify["objective"] == "exact")]
    if detector == "gm-likelihood" and len(det):
        status = _status(det.iloc[0], by_cell)
        out["exact_det_robust_acc_fpr5"] = float(det.iloc[0]["det_robust_acc_fpr5"])
        out.update(_counts(status, _lost(members, by_cell, with_detector=True), "_det_fpr5"))
    return out


def _status(row: pd.Series, by_cell: Dict[str, pd.DataFrame]) -> Optional[pd.Series]:
    cell = by_cell.get(row.get("cell_id"))
    return None if cell is None or "verify_status" not in cell else cell["verify_status"]


def _lost(members: pd.DataFrame, by_cell: Dict[str, pd.DataFrame], with_detector: bool) -> Optional[pd.Series]:
    """Per point (dataset index): whether any member attack won it."""
    lost = None
    for cell_id in members.get("cell_id", pd.Series(dtype=str)):
        cell = by_cell.get(cell_id)
        if cell is None:
            return None
        won = cell["adv_pred"] != cell["label"]
        if with_detector:
            won &= ~cell["flagged_fpr5"].astype(bool)
        lost = won if lost is None else (lost | won.reindex(lost.index, fill_value=False))
    return lost


def _counts(status: Optional[pd.Series], lost: Optional[pd.Series], suffix: str) -> Dict[str, float]:
    if status is None or lost is None:
        return {}
    lost = lost.reindex(status.index, fill_value=False)
    return {f"missed{suffix}": int(((status == "not-robust") & ~lost).sum()),
            f"contradicted{suffix}": int(((status == "robust") & lost).sum())}
