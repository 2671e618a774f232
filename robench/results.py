"""The run directory's public API in one import: schema, reader/writer, file helpers, provenance.

``from robench.results import RunDir, read_run, RESULT_COLUMNS, atomic_write_csv`` is what
reports, benchmarks and users' scripts import; the pieces live in
:mod:`robench.schema` (the file layout and columns), :mod:`robench.rundir` (RunDir),
:mod:`robench.io` (atomic writes, deterministic CSV) and :mod:`robench.provenance`.
"""

from __future__ import annotations

from robench.io import (
    atomic_write, atomic_write_bytes, atomic_write_csv, atomic_write_json, atomic_write_text, csv_text,
    format_float, format_frame, order_columns, sort_rows, to_jsonable,
)
from robench.provenance import collect_versions, git_hash
from robench.rundir import RunDir, read_run, write_results
from robench.runfiles import FeatureSet, RunFiles
from robench.schema import (
    CELL_KEY, EXTRA_COLUMNS, ID_COLUMNS, METRIC_COLUMNS, RESULT_COLUMNS, SAMPLE_COLUMNS, SANITY_COLUMNS,
    TEXT_COLUMNS, TIMING_COLUMNS, WORST_CASE, check_cell_id, make_cell_id, read_csv, safe_name,
)

__all__ = [
    "ID_COLUMNS", "METRIC_COLUMNS", "EXTRA_COLUMNS", "RESULT_COLUMNS", "SAMPLE_COLUMNS", "TIMING_COLUMNS",
    "SANITY_COLUMNS", "TEXT_COLUMNS", "CELL_KEY", "WORST_CASE", "FeatureSet", "RunDir", "RunFiles", "read_run",
    "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_write_csv",
    "write_results", "read_csv", "csv_text", "format_float", "format_frame", "order_columns", "sort_rows",
    "to_jsonable", "collect_versions", "git_hash", "make_cell_id", "check_cell_id", "safe_name",
]
