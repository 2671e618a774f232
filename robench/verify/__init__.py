"""Exact verification and certified bounds: the other side of every attack number.

Attacks give an upper bound on robust accuracy; this package gives the exact
value on small ReLU networks (mixed-integer programming, Tjeng et al. 2019)
and a certified lower bound on larger ones (CROWN, Zhang et al. 2018; IBP,
Gowal et al. 2018). For GM heads the margin is affine in the features and the
gm-likelihood detector's threshold is a convex quadratic constraint, so the
detection-aware question is exact too::

    from robench.verify import verify_points
    results = verify_points(model, x, y, eps=0.05, method="exact", x_start=x_adv)
    robust_acc = sum(r.status == "robust" for r in results) / len(results)

The solvers (HiGHS, SCIP) are optional: ``pip install -e '.[verify]'``; they
are imported only by ``method="exact"``.
"""

from __future__ import annotations

from robench.verify.api import (METHODS, STATUSES, VerifyConfig, VerifyResult, check_supported, supported,
                                verify_points)
from robench.verify.extract import SUPPORTED, extract_network

__all__ = ["METHODS", "STATUSES", "SUPPORTED", "VerifyConfig", "VerifyResult", "check_supported",
           "extract_network", "supported", "verify_points"]
