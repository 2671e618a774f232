"""``robench demo`` (what ``make demo`` runs): the whole pipeline on mnist5k.

Runs the shipped suite ``suites/mnist5k.yaml``: trains a softmax and a GM
model (and a black-box surrogate on the other half of the train split),
attacks both with FGSM, PGD and C&W-L2 under gray-, white- and black-box
threat models, applies the auto detectors, and writes a report. Trained
checkpoints and finished cells are reused on a rerun.
"""

from __future__ import annotations

import time
from pathlib import Path


def demo_suite() -> Path:
    """Path of the shipped demo suite."""
    import robench.suites

    return Path(robench.suites.__file__).parent / "mnist5k.yaml"


def run_demo(out: str, device: str = "auto", quiet: bool = False) -> str:
    """Run the demo into ``out`` (run in ``out/run``, report in ``out``); returns the summary."""
    from robench.reports import build_report
    from robench.suite import run_suite

    t0 = time.time()
    run_dir = Path(out) / "run"
    summary = run_suite(str(demo_suite()), out=str(run_dir), overrides={"device": device}, quiet=quiet)
    index = build_report([str(run_dir)], out)
    minutes = (time.time() - t0) / 60
    return f"{summary.text()}\n\ndemo finished in {minutes:.1f} min; report: {index}"
