"""index.html: one self-contained page (plots inlined as base64 PNG), rendered with Jinja2.

Everything from the run directories goes through Jinja2's autoescaping; the
only markup the template emits is its own.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from robench.reports.plots import Plot
from robench.reports.runs import ReportRun
from robench.reports.tables import Table, frame_table

TEMPLATES = Path(__file__).resolve().parent / "templates"


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def sanity_tables(runs: Sequence[ReportRun]) -> List[Dict[str, Any]]:
    """Per run with a sanity.csv: its table and which rows are flagged."""
    out = []
    for run in runs:
        if run.sanity is None:
            continue
        table = frame_table(run.sanity, f"Sanity checks: {run.name}")
        flags = run.sanity["flagged"].map(_truthy).tolist() if "flagged" in run.sanity else []
        out.append({"table": table, "flagged": flags, "n_flagged": sum(flags)})
    return out


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "flagged")


def environment():
    """The Jinja2 environment of the report's pages: autoescaping on, undefined names an error."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    return Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                       autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


def run_pages(runs: Sequence[ReportRun]) -> Dict[str, str]:
    """Run name -> the address of its section of index.html (what the leaderboard links to)."""
    return {r.name: f"index.html#run-{i}" for i, r in enumerate(runs, start=1)}


def report_title(runs: Sequence[ReportRun]) -> str:
    return "robench report: " + ", ".join(r.name for r in runs)


def render_index(runs: Sequence[ReportRun], headline: Optional[Table], tables: Sequence[Table],
                 plots: Mapping[str, List[Plot]], out: Path,
                 verification: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``out/index.html`` and return its path.

    Args:
        verification: what :func:`robench.reports.verification.write_verification` returned
            (its table, alerts and plot), or None for a report without verify rows.
    """
    from robench import __version__
    from robench.results import atomic_write_text

    sanity = sanity_tables(runs)
    html = environment().get_template("index.html").render(
        title=report_title(runs),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        runs=[{"name": r.name, "path": str(r.run.path.resolve()), "cells": len(r.results),
               "summary": _manifest_summary(r.manifest), "worst_note": r.worst_note,
               "manifest": json.dumps(r.manifest, indent=2, sort_keys=True)} for r in runs],
        headline=headline,
        tables=tables,
        plots={title: [_plot(p) for p in items] for title, items in plots.items()},
        verification=_verification(verification),
        sanity=sanity,
        n_flagged=sum(s["n_flagged"] for s in sanity),
    )
    return atomic_write_text(out / "index.html", html)


def _plot(plot: Plot) -> Dict[str, Any]:
    return {"title": plot.title, "caption": plot.caption, "file": plot.path.name, "wide": plot.wide,
            "src": data_uri(plot.path)}


def _verification(section: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    if not section:
        return None
    plot = section.get("plot")
    return {"table": section["table"], "tables": list(section["tables"]), "alerts": list(section["alerts"]),
            "plot": _plot(plot) if plot else None}


def _manifest_summary(manifest: Mapping[str, Any]) -> List[List[str]]:
    """The manifest fields a reader looks for first, as (label, value) pairs."""
    versions = manifest.get("versions") or {}
    pairs = [
        ("started", manifest.get("start_time")), ("finished", manifest.get("end_time")),
        ("device", manifest.get("device")), ("git", manifest.get("git") or manifest.get("git_hash")),
        ("seeds", manifest.get("seeds")),
        ("versions", ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
         if isinstance(versions, Mapping) else versions),
    ]
    return [[k, v if isinstance(v, str) else json.dumps(v, sort_keys=True)] for k, v in pairs
            if v not in (None, "", {})]
