"""robench.results: the run-directory schema, atomic writes, byte-reproducible tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import robench.results as results
from robench.errors import RobenchError
from robench.results import (
    ID_COLUMNS, METRIC_COLUMNS, RESULT_COLUMNS, SAMPLE_COLUMNS, RunDir, atomic_write_bytes,
    atomic_write_csv, atomic_write_json, atomic_write_text, make_cell_id, read_run, write_results,
)
from robench.schema import parquet_available  # noqa: E402

SAMPLES = "samples.parquet" if parquet_available() else "samples.csv"  # the run's per-sample records


def _row(model="gm", attack="pgd", eps=0.3, threat="gray-box", detector="gm-likelihood", **metrics):
    row = {"model": model, "defense": "gm", "dataset": "digits", "arch": "small-cnn", "attack": attack,
           "attack_params": "", "norm": "linf", "eps": eps, "threat": threat, "objective": "ce",
           "detector": detector, "seed": 0, "clean_acc": 0.9, "robust_acc": 1 / 3, "auc": 0.95, "n": 3,
           "objective_wins": ""}
    row.update(metrics)
    return row


def _samples(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"index": np.arange(n)[::-1], "input_sha1": ["0123456789ab"] * n,
                         "label": np.arange(n), "clean_pred": np.arange(n), "adv_pred": np.zeros(n, int),
                         "clean_score": rng.normal(size=n), "adv_score": rng.normal(size=n),
                         "linf": np.full(n, 0.3), "l2": rng.random(n), "success": np.arange(n) > 0,
                         "flagged_fpr1": np.zeros(n, bool), "flagged_fpr5": np.ones(n, bool)})


def _make_run(path, rows, manifest=None):
    run = RunDir.create(path)
    run.write_manifest(manifest or {"config": {"command": "attack"}})
    run.write_features("gm", np.ones((3, 2)), [0, 1, 2], [0, 1, 1], [5, 6, 7])
    for row in rows:
        cell_id = make_cell_id(row)
        i = GRID.index(row) if row in GRID else 0  # the same data whatever the writing order
        run.write_cell(cell_id, row, _samples(seed=i), np.full((3, 2), i, np.float32), np.zeros((3, 1, 2, 2)))
        run.write_timing(cell_id, 1.0 + i)
    run.finalize(worst_case=False)  # the schema alone (worst-case rows: tests/test_worstcase.py)
    return run


GRID = [_row(eps=e, threat=t, detector=d) for e in (0.3, 8 / 255) for t in ("white-box", "gray-box")
        for d in ("none", "gm-likelihood")]


# -- schema ------------------------------------------------------------------------------

def test_column_lists():
    assert ID_COLUMNS[:3] == ["model", "defense", "dataset"] and ID_COLUMNS[-1] == "seed"
    assert RESULT_COLUMNS == ID_COLUMNS + METRIC_COLUMNS + ["passes_per_sample", "objective_wins", "cascade_after"]
    assert len(set(RESULT_COLUMNS)) == len(RESULT_COLUMNS)
    assert SAMPLE_COLUMNS[0] == "cell_id" and "input_sha1" in SAMPLE_COLUMNS
    try:
        from robench.metrics import METRIC_COLUMNS as owned
    except ImportError:
        return
    assert METRIC_COLUMNS == list(owned)


def test_importing_results_does_not_import_torch():
    code = "import sys, robench.results; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- atomic writes -----------------------------------------------------------------------

def test_atomic_writes_leave_no_temp_files(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "sub" / "b.txt", "h\u00e9llo\n")
    atomic_write_json(tmp_path / "c.json", {"b": np.float32(0.5), "a": float("nan"), "p": tmp_path,
                                            "arr": np.arange(2), "t": (1, 2)})
    atomic_write_csv(tmp_path / "d.csv", pd.DataFrame({"x": [1.0, np.nan]}))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.txt", "c.json", "d.csv", "sub"]
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "h\u00e9llo\n"
    assert json.loads((tmp_path / "c.json").read_text()) == {"a": None, "arr": [0, 1], "b": 0.5,
                                                             "p": str(tmp_path), "t": [1, 2]}
    assert (tmp_path / "d.csv").read_text() == 'x\n1\n""\n'


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    target.write_text("old")

    def fail(*args):
        raise OSError("disk full")

    import robench.io

    monkeypatch.setattr(robench.io.os, "replace", fail)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


# -- byte-reproducible tables ------------------------------------------------------------

def test_identical_inputs_give_byte_identical_results(tmp_path):
    a = _make_run(tmp_path / "a", GRID)
    b = _make_run(tmp_path / "b", GRID[::-1], manifest={"config": {"command": "attack"}, "start": "later"})
    for name in ("results.csv", SAMPLES, "timings.csv"):
        assert (a.path / name).read_bytes() == (b.path / name).read_bytes(), name
    df = write_results(pd.DataFrame(GRID[::-1]), tmp_path / "c.csv")
    assert df.read_bytes() == (a.path / "results.csv").read_bytes()


def test_results_csv_is_sorted_ordered_and_round_trips(tmp_path):
    run = _make_run(tmp_path / "run", GRID)
    text = (run.path / "results.csv").read_text()
    assert text.splitlines()[0] == ",".join(RESULT_COLUMNS) and "\r" not in text
    df = run.results()
    assert list(df.columns) == RESULT_COLUMNS and len(df) == len(GRID)
    assert df["eps"].tolist()[:4] == [8 / 255] * 4  # the exact float, not a rounded one
    assert df["threat"].tolist()[:2] == ["gray-box", "gray-box"]
    assert df["detector"].tolist()[:2] == ["gm-likelihood", "none"]  # text, never NaN
    assert df["attack_params"].tolist()[0] == "" and np.isnan(df["auc_lo"].iloc[0])
    assert "0.3333333333" in text and "0.33333333333" not in text


def test_format_float():
    assert results.format_float(8 / 255, "eps") == repr(8 / 255)
    assert results.format_float(-0.0) == "0" and results.format_float(float("nan")) == ""
    assert results.format_float(0.1 + 0.2) == "0.3"


# -- the run directory -------------------------------------------------------------------

def test_not_a_run_directory_is_a_clear_error(tmp_path):
    message = r"is not a robench run directory \(no manifest.json / results.csv\)"
    with pytest.raises(RobenchError, match=message):
        read_run(tmp_path)
    run = RunDir.create(tmp_path / "unfinished")
    run.write_manifest({})
    with pytest.raises(RobenchError, match="never finished"):
        read_run(run.path)
    assert not RunDir.is_run(run.path)


def test_create_refuses_a_foreign_folder_and_reopens_a_run(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    with pytest.raises(RobenchError, match="not a robench run directory"):
        RunDir.create(tmp_path / "mine")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RobenchError, match="not a folder"):
        RunDir.create(tmp_path / "file")
    run = _make_run(tmp_path / "run", GRID[:1])
    again = RunDir.create(run.path)
    assert again.has_cell(make_cell_id(GRID[0])) and RunDir.is_run(run.path)
    again.clear()
    assert sorted(p.name for p in run.path.iterdir()) == ["cells"]


def test_cells_features_and_samples_round_trip(tmp_path):
    run = _make_run(tmp_path / "run", GRID)
    cell_id = make_cell_id(GRID[0])
    assert run.has_cell(cell_id) and len(run.cell_ids()) == len(GRID)
    assert run.cell_row(cell_id)["cell_id"] == cell_id
    assert run.adv_features(cell_id).dtype == np.float32 and run.adv_features(cell_id).shape == (3, 2)
    assert run.x_adv(cell_id).shape == (3, 1, 2, 2)
    feats = run.features("gm")
    assert feats.f.dtype == np.float32 and feats.index.tolist() == [5, 6, 7]
    samples = run.samples()
    assert list(samples.columns) == SAMPLE_COLUMNS and len(samples) == 3 * len(GRID)
    assert samples["index"].tolist()[:3] == [0, 1, 2] and samples["success"].dtype == bool
    assert samples["input_sha1"].iloc[0] == "0123456789ab"
    cells = run.cells()
    assert set(cells["cell_id"]) == set(run.cell_ids()) and list(cells.columns[1:]) == ID_COLUMNS
    timings = run.timings()
    assert len(timings) == len(GRID) and timings["seconds"].min() == 1.0
    assert not list(run.path.rglob(".*"))  # no staging folders or temp files
    assert run.sanity() is None


def test_a_bad_cell_leaves_nothing_behind(tmp_path):
    run = RunDir.create(tmp_path / "run")
    with pytest.raises(ValueError, match="do not match"):
        run.write_cell("c1", _row(), _samples(), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="lacks id columns"):
        run.write_cell("c1", {"model": "gm"}, _samples(), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="bad cell id"):
        run.write_cell("../escape", _row(), _samples(), np.zeros((3, 2)))
    assert list((run.path / "cells").iterdir()) == []


def test_make_cell_id_is_readable_stable_and_distinct():
    a, b = make_cell_id(_row()), make_cell_id(_row(attack_params="steps=20"))
    assert a == make_cell_id(_row()) and a != b
    assert a.startswith("gm_pgd_eps0.3_gray-box_gm-likelihood_")
    assert "/" not in make_cell_id(_row(model="a/b", attack="ta:APGD"))


# -- provenance --------------------------------------------------------------------------

def test_versions_and_git_hash_never_fail(monkeypatch):
    versions = results.collect_versions()
    assert {"robench", "torch", "torchattacks", "art", "python"} <= set(versions)
    assert isinstance(results.git_hash(), str) and results.git_hash()

    def broken(*args, **kwargs):
        raise FileNotFoundError("git")

    import robench.provenance as provenance

    monkeypatch.setattr(provenance.subprocess, "run", broken)
    monkeypatch.setattr(provenance.metadata, "version", broken)
    assert results.git_hash() == "unknown"
    assert results.collect_versions()["torchattacks"] == "unknown"
    assert os.environ.get("PATH") is not None
