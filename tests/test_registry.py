"""The registry: lazy entry points, near-name suggestions, collisions, third-party plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import robench
from robench.errors import RobenchError, UnknownNameError
from robench.registry import KINDS, Registry, registry

ROOT = Path(__file__).resolve().parents[1]


def test_every_kind_has_builtins():
    for kind in KINDS:
        assert registry(kind).names(), kind


def test_unknown_name_suggests_nearest():
    with pytest.raises(UnknownNameError) as err:
        registry("defenses").get("gmm")
    assert "did you mean gm" in str(err.value)


def test_fnmatch_listing():
    assert robench.list_attacks("pgd*") == ["pgd", "pgd-l2"]
    assert robench.list_defenses("soft*") == ["softmax"]


def test_register_decorator_and_collision():
    reg = registry("detectors")

    @robench.register("detectors", "test-only-detector")
    class Dummy:
        pass

    try:
        assert reg.get("test-only-detector") is Dummy
        with pytest.raises(RobenchError, match="duplicate detector name 'test-only-detector'.*<python>"):
            robench.register("detectors", "test-only-detector")(object)
    finally:
        reg.unregister("test-only-detector")


def test_entry_point_collision_names_both_providers(tmp_path, monkeypatch):
    _fake_dist(tmp_path, "otherpkg", "[robench.defenses]\ngm = otherpkg_mod:Thing\n", "Thing = 1\n", "otherpkg_mod")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RobenchError) as err:
        Registry("defenses").names()
    assert "robench" in str(err.value) and "otherpkg" in str(err.value)


def test_lookup_is_lazy():
    reg = Registry("defenses")
    reg.names()
    assert all(e.obj is None for e in reg.entries())


PLUGIN = '''
"""A third-party defense: label smoothing."""
import torch.nn.functional as F
from robench.defenses.base import Defense


class LabelSmoothing(Defense):
    name = "label-smoothing"
    head = "linear"
    defaults = {"smoothing": 0.1}

    def loss(self, model, x, y, progress):
        loss = F.cross_entropy(model(x), y, label_smoothing=self.params["smoothing"])
        return loss, {"ce": loss.item()}
'''


def _fake_dist(root: Path, dist: str, entry_points: str, module_src: str, module: str) -> None:
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    (root / f"{module}.py").write_text(textwrap.dedent(module_src))


def test_third_party_defense_lists_and_trains(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _fake_dist(site, "robench_smoothing", "[robench.defenses]\nlabel-smoothing = smoothing_plugin:LabelSmoothing\n",
               PLUGIN, "smoothing_plugin")
    env = {**os.environ, "PYTHONPATH": str(site)}
    cli = [sys.executable, "-m", "robench.cli"]
    listed = subprocess.run(cli + ["list", "defenses", "--json"], env=env, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    names = {e["name"]: e["provider"] for e in json.loads(listed.stdout)}
    assert names["label-smoothing"] == "robench_smoothing"
    out = tmp_path / "ls.pt"
    trained = subprocess.run(cli + ["train", "--defense", "label-smoothing:smoothing=0.2", "--dataset", "digits",
                                    "--epochs", "2", "--out", str(out), "-q"],
                             env=env, capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    model = robench.load_model(str(out))
    assert model.info.defense == "label-smoothing"
    assert model.info.defense_params == {"smoothing": 0.2}
    assert model.info.metrics["clean_test_acc"] > 0.5
