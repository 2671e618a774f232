"""``robench run SUITE.yaml``: validation with line numbers, CLI overrides, --force."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from robench.cli import cli
from robench.suite import SuiteError, load_suite

SUITES = Path(__file__).resolve().parent.parent / "suites"

BAD = """\
dataset: digits
modles: []
models:
  - name: soft
    train: {defense: softmx, epochs: 0, feature_dimm: 8}
  - name: other
    path: /no/such.pt
    colour: red
attacks:
  - fgsm
  - name: pgd
    stepz: 3
  - {name: pdg}
eps: [0.1, 2]
threats: [gray-box, black-box]
detectors: [max-softmax, mahalanobiss]
n: "30"
"""

EXPECTED = [
    "line 2: unknown key 'modles' (did you mean 'models'?)",
    "line 5: unknown defense 'softmx'; did you mean softmax?",
    "line 5: models[0].train.epochs must be positive, got 0",
    "line 5: unknown key 'models[0].train.feature_dimm' (did you mean 'feature_dim'?)",
    "line 6: models[1].name: a checkpoint given by path is named by its file stem ('such')",
    "line 7: models[1].path: checkpoint /no/such.pt: no such file",
    "line 8: unknown key 'models[1].colour'",
    "line 12: attack pgd: unknown argument 'stepz' (did you mean 'steps'?)",
    "line 13: unknown attack 'pdg'; did you mean pgd",
    "line 14: eps must be a number in [0, 1] (pixel space), got 2",
    "line 15: threat black-box needs a 'surrogate'",
    "line 16: unknown detector 'mahalanobiss'; did you mean mahalanobis?",
    "line 17: 'n' must be an integer, got str",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A softmax small-cnn on digits, one epoch (the suite runs only need a working model)."""
    from robench.checkpoints import save_checkpoint
    from robench.training import TrainConfig, train

    cfg = TrainConfig(defense="softmax", dataset="digits", epochs=1, feature_dim=8, seed=0, device="cpu")
    return save_checkpoint(train(cfg, quiet=True), tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def write_suite(folder: Path, ckpt: Path, seed: int = 0) -> Path:
    path = folder / "suite.yaml"
    path.write_text(f"""\
dataset: digits
models: [{ckpt}]
attacks:
  - {{name: fgsm}}
eps: [0.1]
detectors: [max-softmax]
n: 20
batch_size: 20
seed: {seed}
device: cpu
""")
    return path


def run(*args: str):
    return CliRunner().invoke(cli, ["run", *map(str, args), "-q"])


def test_every_problem_is_reported_at_once_with_its_line(tmp_path):
    suite = tmp_path / "bad.yaml"
    suite.write_text(BAD)
    result = run(suite, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: suite") and "13 problem(s)" in lines[0], lines
    for needle in EXPECTED:
        assert needle in lines[0], needle
    # Validation comes before any work: nothing trained, no run directory made.
    assert not (tmp_path / "out").exists()


def test_problems_come_in_file_order(tmp_path):
    suite = tmp_path / "bad.yaml"
    suite.write_text(BAD)
    with pytest.raises(SuiteError) as err:
        load_suite(str(suite))
    listed = str(err.value).split("problem(s): ", 1)[1]
    found = [int(part.split()[1].rstrip(":")) for part in listed.split("; ") if part.startswith("line ")]
    assert found == sorted(found) and found[0] == 2


@pytest.mark.parametrize("text, needle", [
    ("models: [a.pt\nattacks: [fgsm]\n", "line 2: YAML syntax error"),
    ("- just\n- a list\n", "the top level must be a mapping"),
    ("models: [{train: {defense: gm}, arch: small-cnn}]\nattacks: [fgsm]\neps: [0.1]\n",
     "line 1: models[0].arch is for a checkpoint given by path"),
    ("models: [{train: {defense: gm, params: [1]}}]\nattacks: [{name: pgd, steps: 0}]\neps: 0.1\n",
     "line 1: 'models[0].train.params' must be a mapping, got list"),
    ("models: [{train: {defense: gm}}]\nattacks:\n  - {name: pgd,\n     steps: 0}\neps: [0.1]\n",
     "line 4: attack pgd: steps must be an integer in [1, inf), got 0"),
    ("models: [{train: {defense: gm}}]\nattacks: [fgsm]\neps: [0.1]\nexecutor: spark\n",
     "line 4: executor must be one of local, ray"),
    ("models: [{train: {defense: gm}}]\nattacks: [fgsm]\neps: [0.1]\ndataset: cifar10:/no/such\n",
     "line 4: dataset cifar10:/no/such: /no/such: no such file or folder"),
    ("models:\n  - {name: a, train: {defense: gm}}\n  - {name: a, train: {defense: softmax}}\n"
     "attacks: [fgsm, fgsm]\neps: [0.1]\n", "line 3: two models are named 'a'"),
    ("models:\n  - {name: a, train: {defense: gm}}\nattacks: [fgsm, fgsm]\neps: [0.1]\n",
     "line 3: attack 'fgsm' is listed twice"),
    ("models:\n  - {name: mine, path: suite.yaml}\nattacks: [fgsm]\neps: [0.1]\n",
     "line 2: models[0].name: a checkpoint given by path is named by its file stem ('suite')"),
    ("models: [{train: {defense: gm}}]\nattacks: [fgsm]\neps: [0.1]\n", "--n: n must be an integer >= 1, got 0"),
    ("models: [{train: {defense: gm}}]\nattacks:\n  - {name: pgd, threats: [grey-box]}\neps: [0.1]\n",
     "line 3: unknown threat model 'grey-box'"),
    ("models: [{train: {defense: gm}}]\nattacks:\n  - {name: pgd, threats: [black-box]}\neps: [0.1]\n",
     "threat black-box needs a 'surrogate'"),
    ("models: [{train: {defense: gm}}]\nattacks: [fgsm]\neps: [0.1]\nbatch_size: lots\n",
     "line 4: batch_size must be an integer >= 1 or auto, got 'lots'"),
    ("models: [{train: {defense: gm}}]\nattacks: [fgsm]\neps: [0.1]\namp: fp16\n",
     "line 4: amp must be bf16 (or not given), got 'fp16'"),
])
def test_single_problems(tmp_path, monkeypatch, text, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "suite.yaml").write_text("")
    suite = tmp_path / "s.yaml"
    suite.write_text(text)
    with pytest.raises(SuiteError) as err:
        load_suite(str(suite), {"n": 0} if needle.startswith("--n") else None)
    assert needle in str(err.value), str(err.value)


def test_shipped_suites_validate(monkeypatch, tmp_path):
    demo = load_suite(str(SUITES / "mnist5k.yaml"))
    assert [m.name for m in demo.models] == ["softmax", "gm"] and demo.surrogate.name == "surrogate"
    assert dict(demo.attacks)["cw-l2:binary_search_steps=3,steps=15"] == [0.0]
    assert demo.config.attack_threats == {"cw-l2:binary_search_steps=3,steps=15": ["gray-box"]}
    # The CIFAR-10 suite is valid once its dataset folder exists (nothing is read before the run).
    (tmp_path / "data" / "cifar10").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cifar = load_suite(str(SUITES / "cifar10-resnet20.yaml"), {"device": "cpu"})
    assert cifar.models[0].train["arch"] == "resnet20" and cifar.config.n == 1000


def test_cli_options_override_file_values(tmp_path, tiny_ckpt):
    suite = write_suite(tmp_path, tiny_ckpt, seed=0)
    out = tmp_path / "run"
    result = run(suite, "--out", out, "--n", "10", "--seed", "3", "--batch-size", "5")
    assert result.exit_code == 0, result.output
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert (config["n"], config["seed"], config["batch_size"]) == (10, 3, 5)
    header, *rows = (out / "results.csv").read_text().splitlines()
    n_col, seed_col = header.split(",").index("n"), header.split(",").index("seed")
    assert [(r.split(",")[n_col], r.split(",")[seed_col]) for r in rows] == [("10", "3")] * 2  # fgsm, worst case
    assert "sanity:" in result.output and "1 cells run, 0 cached" in result.output


def test_other_configuration_is_refused_unless_force(tmp_path, tiny_ckpt):
    suite = write_suite(tmp_path, tiny_ckpt)
    out = tmp_path / "run"
    assert run(suite, "--out", out).exit_code == 0
    first = (out / "results.csv").read_bytes()
    cells = sorted(p.name for p in (out / "cells").iterdir())

    refused = run(suite, "--out", out, "--seed", "4")
    assert refused.exit_code == 2
    assert "different configuration (seed: 0 -> 4)" in refused.stderr and "--force" in refused.stderr
    assert (out / "results.csv").read_bytes() == first  # untouched

    forced = run(suite, "--out", out, "--seed", "4", "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] == 4
    new_cells = sorted(p.name for p in (out / "cells").iterdir())
    assert len(new_cells) == 1 and new_cells != cells  # a new key; the stale cell is gone

    back = run(suite, "--out", out, "--force")  # back to seed 0: recomputed, same bytes as the first time
    assert back.exit_code == 0 and (out / "results.csv").read_bytes() == first


def test_foreign_folder_is_refused_before_training(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    suite = tmp_path / "s.yaml"
    suite.write_text("dataset: digits\nmodels: [{name: m, train: {defense: softmax, epochs: 1}}]\n"
                     "attacks: [fgsm]\neps: [0.1]\ndevice: cpu\n")
    result = run(suite, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "is not a robench run directory" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]


def test_train_specs_are_trained_once_and_cached(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("dataset: digits\nmodels: [{name: m, train: {defense: softmax, epochs: 1, feature_dim: 8}}]\n"
                     "attacks: [fgsm]\neps: [0.1]\ndetectors: [none]\nn: 10\nbatch_size: 10\ndevice: cpu\n"
                     "sanity: false\n")
    out = tmp_path / "run"
    assert run(suite, "--out", out).exit_code == 0
    (ckpt,) = (out / "checkpoints").glob("*/m.pt")
    stamp = ckpt.stat().st_mtime_ns
    again = run(suite, "--out", out)
    assert again.exit_code == 0 and "0 cells run, 1 cached" in again.output
    assert ckpt.stat().st_mtime_ns == stamp  # not retrained
    assert (out / "results.csv").read_text().splitlines()[1].startswith("m,softmax,digits,small-cnn,fgsm,")
    assert not (out / "sanity.csv").exists()


def test_l2_budgets_above_one_are_allowed_only_for_l2_attacks(tmp_path):
    from robench.config import RunConfig
    from robench.validation import config_problems

    def problems(attacks, eps, attack_eps=None):
        cfg = RunConfig(models=["m.pt"], attacks=attacks, eps=eps, attack_eps=attack_eps or {})
        return [p.text() for p in config_problems(cfg, files=False)]

    assert problems(["pgd-l2"], [1.5]) == [] and problems(["standard:norm=L2"], [2.0]) == []
    assert problems(["pgd", "pgd-l2"], [1.5]) == ["eps must be a number in [0, 1] (pixel space), got 1.5"]
    assert problems(["fgsm", "pgd-l2"], [0.1], {"pgd-l2": [1.5]}) == []
    assert problems(["pgd-l2"], [-1.0]) == ["eps must be a finite number >= 0 (an L2 budget in pixel space), got -1.0"]
    # In a suite: an attack's own eps list is checked with that attack's norm, at its line.
    suite = tmp_path / "l2.yaml"
    ckpt = tmp_path / "m.pt"
    text = ("models:\n  - path: {ckpt}\nattacks:\n  - name: pgd-l2\n    eps: [1.5]\n"
            "  - name: pgd\n    eps: [0.1, 1.5]\neps: [0.1]\n")
    suite.write_text(text.format(ckpt=ckpt))
    with pytest.raises(SuiteError) as err:
        load_suite(str(suite))
    assert "line 7: eps must be a number in [0, 1] (pixel space), got 1.5" in str(err.value)
    assert "line 5" not in str(err.value)
