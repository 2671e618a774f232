"""Reports: tables, plots and the HTML page built from run directories.

``build_report(run_dirs, out_dir)`` is what ``robench report`` calls. matplotlib
and scikit-learn are imported only while a report is being built.
"""

from __future__ import annotations

from robench.reports.build import build_report

__all__ = ["build_report"]
