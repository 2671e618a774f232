"""``robench demo`` (what ``make demo`` runs): the whole pipeline on mnist5k.

Trains a softmax and a GM model (and a black-box surrogate on the other half
of the train split), attacks both with FGSM, PGD and C&W-L2 under gray-,
white- and black-box threat models, applies the auto detectors, and writes a
report. Checkpoints are kept under ``OUT/checkpoints`` and reused on a rerun.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List

DEMO_N = 200
LINF_EPS = [0.1, 0.2, 0.3]
THREATS = ["gray-box", "white-box", "black-box"]
MODELS: Dict[str, Dict] = {
    "softmax": {"defense": "softmax", "epochs": 6, "train_half": "a"},
    "gm": {"defense": "gm", "epochs": 6, "train_half": "a"},
    "surrogate": {"defense": "softmax", "epochs": 4, "train_half": "b"},
}


def train_demo_models(out: Path, device: str, quiet: bool) -> Dict[str, Path]:
    """Train (or reuse) the demo checkpoints."""
    from robench.checkpoints import save_checkpoint
    from robench.errors import RobenchError
    from robench.training import TrainConfig, train
    import robench

    paths = {}
    for name, spec in MODELS.items():
        path = out / "checkpoints" / f"{name}.pt"
        try:
            robench.load_model(str(path))
        except RobenchError:
            cfg = TrainConfig(defense=spec["defense"], dataset="mnist5k", epochs=spec["epochs"],
                              train_half=spec["train_half"], device=device, seed=0)
            save_checkpoint(train(cfg, quiet=quiet), path)
        paths[name] = path
    return paths


def run_demo(out: str, device: str = "auto", quiet: bool = False) -> str:
    """Run the demo into ``out``; returns the terminal summary."""
    from robench.reports import build_report
    from robench.runner import AttackConfig, run_attack

    t0 = time.time()
    root = Path(out)
    paths = train_demo_models(root, device, quiet)
    targets: List[str] = [str(paths["softmax"]), str(paths["gm"])]
    common = dict(models=targets, threats=THREATS, surrogate=str(paths["surrogate"]), detectors=["auto"],
                  n=DEMO_N, batch_size=DEMO_N, seed=0, device=device)
    linf = AttackConfig(attacks=["fgsm", "pgd:steps=10"], eps=LINF_EPS, **common)
    cw = AttackConfig(attacks=["cw-l2:binary_search_steps=4,steps=25"], eps=[0.0], **common)
    summaries = [run_attack(linf, str(root / "runs" / "linf"), quiet=quiet),
                 run_attack(cw, str(root / "runs" / "cw-l2"), quiet=quiet)]
    index = build_report([str(root / "runs" / "linf"), str(root / "runs" / "cw-l2")], str(root))
    minutes = (time.time() - t0) / 60
    return "\n\n".join(summaries) + f"\n\ndemo finished in {minutes:.1f} min; report: {index}"
