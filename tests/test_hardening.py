"""Hostile and broken input at the command line: one clear line, the right exit code, nothing left behind.

Checkpoints here are small-cnn models for digits with freshly initialised
weights: what is tested is how files are read and refused, not how well a model
classifies, so nothing is trained.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robench.checkpoints import build_model, load_model, save_checkpoint
from robench.cli import cli
from robench.data import load_dataset
from robench.errors import CheckpointError, DataError, RobenchError
from robench.models import ModelInfo
from robench.suite import load_suite

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_CUDA = torch.cuda.is_available()


# -- planted files ----------------------------------------------------------------------

class Payload:
    """Unpickling this calls ``fn(*args)``: what a hostile checkpoint does to whoever loads it."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def untrained(path: Path, *, num_classes: int = 10, size: int = 8, dataset: str = "digits") -> Path:
    """A valid robench checkpoint of a freshly initialised small-cnn (fast, deterministic)."""
    kwargs = {"num_classes": num_classes, "feature_dim": 8, "head": "linear", "in_channels": 1,
              "input_size": size}
    info = ModelInfo(arch="small-cnn", arch_kwargs=kwargs, defense="softmax", defense_params={},
                     dataset=dataset, num_classes=num_classes, feature_dim=8, input_shape=(1, size, size),
                     mean=(0.3,), std=(0.38,), split={"seed": 0, "train_half": None})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(info)
    return save_checkpoint(model.freeze(), path)


def _edited(src: Path, dst: Path, edit) -> Path:
    raw = torch.load(src, weights_only=True)
    edit(raw)
    torch.save(raw, dst)
    return dst


def _set_first_weight(value: float):
    def edit(raw):
        next(iter(raw["state_dict"].values())).view(-1)[0] = value
    return edit


def _as_gm_mnist_net(raw):
    raw["arch"] = "gm-mnist-net"
    raw["arch_kwargs"].update(in_channels=1, input_size=28)


def plant_evil(folder: Path, marker: Path) -> Dict[str, Path]:
    """Checkpoints whose unpickling would create ``marker``, in every container torch reads."""
    folder.mkdir(parents=True, exist_ok=True)
    shell = Payload(os.system, f"touch {marker}")
    opener = Payload(open, str(marker), "w")  # builtins.open: creates the file when called
    files = {"evil": folder / "evil.pt", "evil_open": folder / "evil_open.pt",
             "evil_legacy": folder / "evil_legacy.pt", "evil_raw": folder / "evil_raw.pt"}
    torch.save({"format": "robench-checkpoint", "state_dict": shell}, files["evil"])
    torch.save({"net": {"conv1.weight": opener}}, files["evil_open"])
    torch.save({"state_dict": shell}, files["evil_legacy"], _use_new_zipfile_serialization=False)
    files["evil_raw"].write_bytes(pickle.dumps({"state_dict": shell}, protocol=2))
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Dict[str, str]:
    """Every file the bad invocations point at (created once; paths as strings)."""
    d = tmp_path_factory.mktemp("planted")
    marker = d / "PWNED"
    soft = untrained(d / "soft.pt")
    f: Dict[str, Path] = {"marker": marker, "soft": soft, **plant_evil(d / "evil", marker)}
    f["wide"] = untrained(d / "wide.pt", size=12)
    f["three"] = untrained(d / "three.pt", num_classes=3)
    f["empty"] = d / "empty.pt"
    f["empty"].write_bytes(b"")
    f["random"] = d / "random.pt"
    f["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    f["text"] = d / "notes.pt"
    f["text"].write_text("a checkpoint? no, a shopping list\n")
    f["wrongformat"] = d / "arrays.pt"
    with open(f["wrongformat"], "wb") as fh:
        np.savez(fh, x=np.zeros(3))  # a valid zip, but numpy's, not torch's
    data = soft.read_bytes()
    f["truncated"] = d / "truncated.pt"
    f["truncated"].write_bytes(data[: len(data) // 2])
    f["zipcorrupt"] = d / "zipcorrupt.pt"
    f["zipcorrupt"].write_bytes(_corrupt_zip_member(data))
    f["mismatch"] = _edited(soft, d / "mismatch.pt", _as_gm_mnist_net)
    f["nan"] = _edited(soft, d / "nan.pt", _set_first_weight(float("nan")))
    f["inf"] = _edited(soft, d / "inf.pt", _set_first_weight(float("inf")))
    f["sevenclasses"] = _edited(soft, d / "sevenclasses.pt", lambda raw: raw.update(num_classes=7))
    f["folder"] = d / "a-folder"
    f["folder"].mkdir()
    f["emptydir"] = d / "emptydir"
    f["emptydir"].mkdir()
    f["notafolder"] = d / "plain-file.txt"
    f["notafolder"].write_text("x")
    f.update(_npz_files(d))
    f.update(_suites(d, soft, f["evil"]))
    f["unfinished"] = d / "unfinished-run"
    (f["unfinished"] / "cells").mkdir(parents=True)
    (f["unfinished"] / "manifest.json").write_text("{}")
    return {k: str(v) for k, v in f.items()}


def _corrupt_zip_member(data: bytes) -> bytes:
    """The checkpoint with its pickle's bytes damaged but the zip directory intact (bad CRC)."""
    import io

    src = zipfile.ZipFile(io.BytesIO(data))
    name = next(n for n in src.namelist() if n.endswith("data.pkl"))
    info = src.getinfo(name)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    damaged = bytearray(data)
    for i in range(start, start + min(info.file_size, 64)):
        damaged[i] ^= 0x5A
    return bytes(damaged)


def _npz_files(d: Path) -> Dict[str, Path]:
    rng = np.random.default_rng(0)
    x8 = rng.random((120, 1, 8, 8)).astype(np.float32)
    specs = {
        "npz_no_x": {"y": np.arange(120) % 10},
        "npz_no_y": {"x": x8},
        "npz_range": {"x": x8 * 3, "y": np.arange(120) % 10},
        "npz_dims": {"x": x8.reshape(120, 64), "y": np.arange(120) % 10},
        "npz_labels": {"x": x8, "y": np.arange(120) % 12},  # 12 classes for a 10-class model
        "npz_sparse": {"x": x8[:20], "y": np.arange(20)},  # 20 classes of one image each
        "npz_wide": {"x": rng.random((120, 1, 12, 12)), "y": np.arange(120) % 10},
    }
    out = {}
    for name, arrays in specs.items():
        out[name] = d / f"{name}.npz"
        np.savez(out[name], **arrays)
    return out


def _suites(d: Path, soft: Path, evil: Path) -> Dict[str, Path]:
    texts = {
        "suite_syntax": "dataset: digits\nmodels: [soft.pt\nattacks: [fgsm]\neps: [0.1]\n",
        "suite_keys": f"dataset: digits\nmodels: ['{soft}']\nattacks: [fgsm]\neps: [0.1]\ntreats: [gray-box]\n"
                      f"n: 10\nbatchsize: 10\n",
        "suite_missing_ckpt": "dataset: digits\nmodels: [/no/such/model.pt]\nattacks: [fgsm]\neps: [0.1]\n",
        "suite_names": f"dataset: digitz\nmodels: ['{soft}']\nattacks: [fgsmm]\neps: [0.1]\n",
        "suite_evil": f"dataset: digits\nmodels: ['{evil}']\nattacks: [fgsm]\neps: [0.1]\nn: 10\n",
        "suite_evil_map": f"dataset: digits\nmodels:\n  - {{path: '{evil}'}}\nattacks: [fgsm]\n"
                          f"eps: [0.1]\nn: 10\n",
        "suite_evil_surrogate": f"dataset: digits\nmodels: ['{soft}']\nsurrogate: '{evil}'\nattacks: [fgsm]\n"
                                f"eps: [0.1]\nthreats: [black-box]\nn: 10\n",
    }
    out = {}
    for name, text in texts.items():
        out[name] = d / f"{name}.yaml"
        out[name].write_text(text)
    return out


@pytest.fixture(scope="module")
def prior_run(files, tmp_path_factory) -> Path:
    """A finished run directory (fgsm, eps 0.1, 10 points, no detector)."""
    out = tmp_path_factory.mktemp("prior") / "run"
    result = CliRunner().invoke(cli, ["attack", "--model", files["soft"], "--attack", "fgsm", "--eps", "0.1",
                                      "--n", "10", "--batch-size", "10", "--detector", "none", "-q",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output + result.stderr
    return out


# -- calling the CLI ---------------------------------------------------------------------

def invoke(args: List[str], cwd: Path, how: str = "cli") -> Tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``robench ARGS``, in this process or a fresh one."""
    if how == "sub":
        proc = subprocess.run([sys.executable, "-m", "robench.cli", *args], cwd=cwd, capture_output=True,
                              text=True, timeout=600)
        return proc.returncode, proc.stdout, proc.stderr
    result = CliRunner().invoke(cli, args)
    if result.exc_info is not None and result.exc_info[0] is not SystemExit:
        raise AssertionError(f"robench {' '.join(args)} raised") from result.exception
    return result.exit_code, result.stdout, result.stderr


def error_line(code: int, stdout: str, stderr: str) -> str:
    """The one line a failed command printed on stderr (asserts there is exactly one)."""
    assert code != 0, stdout
    assert "Traceback" not in stderr + stdout, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


def tree(folder: Path) -> Dict[str, Tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


# -- hostile pickles -------------------------------------------------------------------------

HOSTILE = [
    ("inspect", ["inspect", "{evil}"]),
    ("inspect-open", ["inspect", "{evil_open}"]),
    ("inspect-legacy", ["inspect", "{evil_legacy}"]),
    ("inspect-raw-pickle", ["inspect", "{evil_raw}"]),
    ("attack-model", ["attack", "--model", "{evil}", "--attack", "fgsm", "--eps", "0.1", "--out", "{out}"]),
    ("attack-official", ["attack", "--model", "{evil_open}", "--attack", "fgsm", "--eps", "0.1",
                         "--dataset", "digits", "--out", "{out}"]),
    ("attack-surrogate", ["attack", "--model", "{soft}", "--surrogate", "{evil}", "--threat", "black-box",
                          "--attack", "fgsm", "--eps", "0.1", "--n", "10", "--out", "{out}"]),
    ("run-path", ["run", "{suite_evil}", "--out", "{out}"]),
    ("run-mapping", ["run", "{suite_evil_map}", "--out", "{out}"]),
    ("run-surrogate", ["run", "{suite_evil_surrogate}", "--out", "{out}"]),
]


@pytest.mark.parametrize("args", [a for _, a in HOSTILE], ids=[i for i, _ in HOSTILE])
def test_code_in_a_checkpoint_never_runs(files, tmp_path, args):
    marker = Path(files["marker"])
    argv = [a.format(**files, out=tmp_path / "out") for a in args]
    code, stdout, stderr = invoke(argv, tmp_path)
    line = error_line(code, stdout, stderr)
    assert code == 1 and "refused" in line and "could run code" in line, line
    assert not marker.exists(), "the checkpoint's code ran"
    assert list(tmp_path.iterdir()) == []


def test_code_in_a_cifar_batch_never_runs(tmp_path, files):
    """CIFAR-10 batches are pickles too: a planted one is refused, not run."""
    marker = tmp_path / "PWNED"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"data": Payload(os.system, f"touch {marker}"),
                                                  "labels": [0]}))
    with pytest.raises(DataError, match="refused to load posix.system"):
        load_dataset(f"cifar10:{tmp_path}")
    out = tmp_path / "run"
    code, stdout, stderr = invoke(["attack", "--model", files["soft"], "--attack", "fgsm", "--eps", "0.1",
                                   "--dataset", f"cifar10:{tmp_path}", "--out", str(out)], tmp_path)
    assert "refused" in error_line(code, stdout, stderr)
    assert not marker.exists() and not out.exists()


# -- the table of bad invocations -------------------------------------------------------------

ATTACK = ["attack", "--model", "{soft}", "--attack", "fgsm", "--eps", "0.1", "--n", "10", "--batch-size", "10",
          "--detector", "none", "--out", "{out}"]


def attack(*extra: str, replace: Dict[str, str] = {}) -> List[str]:  # noqa: B006 (read only)
    """The attack command with options replaced or added."""
    args = list(ATTACK)
    for opt, value in replace.items():
        args[args.index(opt) + 1] = value
    return args + list(extra)


# (id, how, args, exit code, needles in the error line, setup)
# how: "cli" (CliRunner, in process) or "sub" (a real `python -m robench.cli` process).
BAD = [
    # train
    ("train-unknown-defense", "cli", ["train", "--defense", "gmm", "--dataset", "digits", "--out", "{out}/m.pt"],
     2, ["unknown defense 'gmm'", "did you mean gm"], None),
    ("train-unknown-dataset", "cli", ["train", "--defense", "gm", "--dataset", "digts", "--out", "{out}/m.pt"],
     2, ["unknown dataset 'digts'", "did you mean digits"], None),
    ("train-unknown-arch", "cli", ["train", "--defense", "gm", "--dataset", "digits", "--arch", "small-cn",
                                   "--out", "{out}/m.pt"], 2, ["unknown arch 'small-cn'", "did you mean small-cnn"], None),
    ("train-epochs-0", "cli", ["train", "--defense", "gm", "--dataset", "digits", "--epochs", "0",
                               "--out", "{out}/m.pt"], 2, ["--epochs must be >= 1"], None),
    ("train-batch-size-0", "cli", ["train", "--defense", "gm", "--dataset", "digits", "--batch-size", "0",
                                   "--out", "{out}/m.pt"], 2, ["--batch-size must be >= 1"], None),
    ("train-npz-missing", "cli", ["train", "--defense", "gm", "--dataset", "npz:/no/such/data.npz",
                                  "--out", "{out}/m.pt"], 1, ["no such file"], None),
    ("train-npz-no-x", "cli", ["train", "--defense", "gm", "--dataset", "npz:{npz_no_x}", "--out", "{out}/m.pt"],
     1, ["missing array(s) x"], None),
    ("train-npz-sparse", "cli", ["train", "--defense", "gm", "--dataset", "npz:{npz_sparse}",
                                 "--out", "{out}/m.pt"], 1, ["cannot split", "smallest class has only 1"], None),
    ("train-mnist-no-data", "cli", ["train", "--defense", "gm", "--dataset", "mnist:{emptydir}",
                                    "--out", "{out}/m.pt"], 1, ["no readable MNIST files", "never downloads"], None),
    ("train-cifar-no-data", "cli", ["train", "--defense", "gm", "--dataset", "cifar10:{emptydir}",
                                    "--out", "{out}/m.pt"], 1, ["no CIFAR-10 python batches"], None),
    ("train-cifar-missing-folder", "cli", ["train", "--defense", "gm", "--dataset", "cifar10:/no/such/dir",
                                           "--out", "{out}/m.pt"], 1, ["no such folder"], None),
    ("train-cuda", "cli", ["train", "--defense", "gm", "--dataset", "digits", "--device", "cuda",
                           "--out", "{out}/m.pt"], 2, ["no CUDA GPU"], "no-cuda"),
    ("train-out-under-a-file", "cli", ["train", "--defense", "gm", "--dataset", "digits",
                                       "--out", "{notafolder}/m.pt"], 2, ["is a file, not a folder"], None),
    ("train-out-is-a-folder", "cli", ["train", "--defense", "gm", "--dataset", "digits", "--out", "{folder}"],
     2, ["is a directory"], None),
    ("train-out-read-only", "cli", ["train", "--defense", "gm", "--dataset", "digits", "--out", "{ro}/m.pt"],
     2, ["not writable"], "read-only"),
    ("train-out-unwritable-for-root", "cli", ["train", "--defense", "gm", "--dataset", "digits",
                                              "--out", "{sysfs}/m.pt"], 2, ["not writable (Permission denied)"], "sysfs"),
    # attack: names and numbers
    ("attack-missing-model", "cli", attack(replace={"--model": "/no/such/model.pt"}), 2, ["no such file"], None),
    ("attack-model-is-a-folder", "cli", attack(replace={"--model": "{folder}"}), 2, ["no such file"], None),
    ("attack-unknown-attack", "cli", attack(replace={"--attack": "fgsmm"}), 2,
     ["unknown attack 'fgsmm'", "did you mean fgsm"], None),
    ("attack-unknown-detector", "cli", attack(replace={"--detector": "gm-likelyhood"}), 2,
     ["unknown detector 'gm-likelyhood'", "did you mean gm-likelihood"], None),
    ("attack-unknown-threat", "cli", attack("--threat", "grey-box"), 2,
     ["unknown threat model 'grey-box'", "gray-box"], None),
    ("attack-unknown-dataset", "cli", attack("--dataset", "digitz"), 2,
     ["unknown dataset 'digitz'", "did you mean digits"], None),
    ("attack-unknown-arch", "cli", attack("--arch", "resnet2"), 2, ["unknown arch 'resnet2'", "did you mean resnet20"],
     None),
    ("attack-eps-negative", "cli", attack(replace={"--eps": "-0.1"}), 2, ["--eps must be a number in [0, 1]"], None),
    ("attack-eps-above-1", "cli", attack(replace={"--eps": "1.5"}), 2, ["--eps", "got 1.5"], None),
    ("attack-eps-nan", "sub", attack(replace={"--eps": "nan"}), 2, ["--eps", "got nan"], None),
    ("attack-steps-0", "cli", attack(replace={"--attack": "pgd:steps=0"}), 2, ["steps must be an integer in [1, inf), got 0"], None),
    ("attack-batch-size-0", "cli", attack(replace={"--batch-size": "0"}), 2, ["--batch-size", "must be an integer >= 1 or auto, got 0"], None),
    ("attack-n-0", "cli", attack(replace={"--n": "0"}), 2, ["--n must be an integer >= 1, got 0"], None),
    ("attack-eps-not-a-number", "cli", attack(replace={"--eps": "big"}), 2, ["'big' is not a valid float"], None),
    # attack: data
    ("attack-npz-no-y", "cli", attack("--dataset", "npz:{npz_no_y}"), 1, ["missing array(s) y", "has: x"], None),
    ("attack-npz-out-of-range", "cli", attack("--dataset", "npz:{npz_range}"), 1, ["x must be in [0, 1]"], None),
    ("attack-npz-dims", "cli", attack("--dataset", "npz:{npz_dims}"), 1, ["3 or 4 dimensions"], None),
    ("attack-npz-labels-beyond-model", "cli", attack("--dataset", "npz:{npz_labels}"), 2,
     ["10 classes", "has 12"], None),
    ("attack-npz-other-image-size", "cli", attack("--dataset", "npz:{npz_wide}"), 2,
     ["expects inputs (1, 8, 8)", "(1, 12, 12)"], None),
    ("attack-mnist-no-data", "cli", attack("--dataset", "mnist:{emptydir}"), 1, ["no readable MNIST files"], None),
    ("attack-cifar-no-data", "cli", attack("--dataset", "cifar10:{emptydir}"), 1, ["no CIFAR-10"], None),
    # attack: models, threats, devices, folders
    ("attack-gm-detector-on-softmax", "cli", attack("--threat", "white-box", replace={"--detector": "gm-likelihood"}),
     1, ["gm-likelihood needs a Gaussian-mixture"], None),
    ("attack-black-box-no-surrogate", "cli", attack("--threat", "black-box"), 2, ["needs a 'surrogate' (--surrogate CKPT)"], None),
    ("attack-surrogate-other-shape", "cli", attack("--threat", "black-box", "--surrogate", "{wide}"), 2,
     ["--surrogate wide", "do not match"], None),
    ("attack-class-count", "cli", attack(replace={"--model": "{three}"}), 2,
     ["3 classes", "digits has 10"], None),
    ("attack-arch-mismatch", "cli", attack(replace={"--model": "{mismatch}"}), 1,
     ["do not match arch gm-mnist-net"], None),
    ("attack-nan-weights", "cli", attack(replace={"--model": "{nan}"}), 1, ["non-finite"], None),
    ("attack-cuda", "cli", attack("--device", "cuda"), 2, ["no CUDA GPU"], "no-cuda"),
    ("attack-other-configuration", "cli", attack(replace={"--eps": "0.2"}), 2,
     ["different configuration", "--force"], "prior-run"),
    ("attack-out-not-a-run", "cli", attack(), 2, ["not a robench run directory"], "foreign-folder"),
    ("attack-out-under-a-file", "cli", attack(replace={"--out": "{notafolder}/run"}), 2,
     ["is a file, not a folder"], None),
    ("attack-out-read-only", "cli", attack(replace={"--out": "{ro}/run"}), 2, ["not writable"], "read-only"),
    ("attack-out-unwritable-for-root", "sub", attack(replace={"--out": "{sysfs}/run"}), 2,
     ["folder /sys is not writable (Permission denied)"], "sysfs"),
    # inspect: broken files
    ("inspect-missing", "cli", ["inspect", "/no/such/model.pt"], 1, ["no such file"], None),
    ("inspect-folder", "cli", ["inspect", "{folder}"], 1, ["is a folder"], None),
    ("inspect-unreadable", "cli", ["inspect", "{locked}"], 1, ["permission denied"], "unreadable"),
    ("inspect-empty", "cli", ["inspect", "{empty}"], 1, ["the file is empty"], None),
    ("inspect-random-bytes", "cli", ["inspect", "{random}"], 1, ["not a PyTorch checkpoint"], None),
    ("inspect-text", "cli", ["inspect", "{text}"], 1, ["not a PyTorch checkpoint"], None),
    ("inspect-npz-as-checkpoint", "cli", ["inspect", "{wrongformat}"], 1, ["zip archive without data.pkl"], None),
    ("inspect-truncated", "cli", ["inspect", "{truncated}"], 1, ["corrupt or truncated"], None),
    ("inspect-zip-corrupt", "cli", ["inspect", "{zipcorrupt}"], 1, ["corrupt or truncated", "Unsupported operand"],
     None),
    ("inspect-arch-mismatch", "cli", ["inspect", "{mismatch}"], 1, ["do not match arch gm-mnist-net"], None),
    ("inspect-nan", "cli", ["inspect", "{nan}"], 1, ["non-finite (NaN or Inf) weights"], None),
    ("inspect-inf", "cli", ["inspect", "{inf}"], 1, ["non-finite (NaN or Inf) weights"], None),
    ("inspect-class-count", "cli", ["inspect", "{sevenclasses}"], 1,
     ["num_classes is 7 but the arch is built with 10"], None),
    ("inspect-hostile", "sub", ["inspect", "{evil}"], 1, ["refused", "posix.system"], None),
    # report
    ("report-not-a-run", "cli", ["report", "{emptydir}", "--out", "{out}"], 1,
     ["is not a robench run directory"], None),
    ("report-unfinished-run", "cli", ["report", "{unfinished}", "--out", "{out}"], 1,
     ["never finished"], None),
    ("report-missing", "cli", ["report", "/no/such/run", "--out", "{out}"], 2, ["does not exist"], None),
    ("report-out-under-a-file", "cli", ["report", "{emptydir}", "--out", "{notafolder}/report"], 2,
     ["is a file, not a folder"], None),
    ("report-out-unwritable", "cli", ["report", "{emptydir}", "--out", "{sysfs}/report"], 2,
     ["not writable (Permission denied)"], "sysfs"),
    # run
    ("run-yaml-syntax", "sub", ["run", "{suite_syntax}", "--out", "{out}"], 2,
     ["line 3", "YAML syntax error"], None),
    ("run-unknown-keys", "cli", ["run", "{suite_keys}", "--out", "{out}"], 2,
     ["line 5: unknown key 'treats'", "did you mean 'threats'", "line 7: unknown key 'batchsize'"], None),
    ("run-unknown-names", "cli", ["run", "{suite_names}", "--out", "{out}"], 2,
     ["did you mean digits", "did you mean fgsm"], None),
    ("run-missing-checkpoint", "cli", ["run", "{suite_missing_ckpt}", "--out", "{out}"], 2,
     ["line 2", "no such file"], None),
    ("run-missing-suite", "cli", ["run", "/no/such/suite.yaml", "--out", "{out}"], 2, ["no such file"], None),
    # list
    ("list-unknown-kind", "sub", ["list", "attackz"], 2, ["unknown kind 'attackz'", "did you mean attacks"], None),
    ("list-unknown-option", "cli", ["list", "defenses", "--jsn"], 2, ["No such option", "--json"], None),
]


def _setup(kind, files: Dict[str, str], work: Path, prior_run: Path, monkeypatch) -> Dict[str, str]:
    """Prepare ``work`` for a row; returns extra template values."""
    extra = {"out": str(work / "out")}
    if kind == "no-cuda" and HAS_CUDA:
        pytest.skip("this machine has a GPU")
    if kind == "read-only":
        if IS_ROOT:
            pytest.skip("root writes into read-only folders")
        (work / "ro").mkdir()
        (work / "ro").chmod(0o555)
        extra["ro"] = str(work / "ro")
    if kind == "sysfs":  # a folder nobody may create files in, root included (Linux)
        if not Path("/sys/kernel").is_dir() or _can_create_in("/sys"):
            pytest.skip("needs Linux sysfs")
        extra["sysfs"] = "/sys"
    if kind == "unreadable":
        locked = work / "locked.pt"
        shutil.copy(files["soft"], locked)
        locked.chmod(0)
        if IS_ROOT:  # root reads anything: make os.access answer as for another user
            real = os.access
            monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(locked) else real(p, mode, **kw))
        extra["locked"] = str(locked)
    if kind == "prior-run":
        shutil.copytree(prior_run, work / "out")
    if kind == "foreign-folder":
        (work / "out").mkdir()
        (work / "out" / "thesis.tex").write_text("\\begin{document}")
    return extra


def _can_create_in(folder: str) -> bool:
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


@pytest.mark.parametrize("row_id, how, args, code, needles, setup", BAD, ids=[r[0] for r in BAD])
def test_bad_invocation(row_id, how, args, code, needles, setup, files, prior_run, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    values = {**files, **_setup(setup, files, work, prior_run, monkeypatch)}
    argv = [a.format(**values) for a in args]
    before = tree(work)
    planted = tree(Path(files["soft"]).parent)
    result = invoke(argv, work, how)
    line = error_line(*result)
    assert result[0] == code, f"exit {result[0]}: {line}"
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert tree(work) == before, "the command left new or changed files behind"
    assert tree(Path(files["soft"]).parent) == planted


def test_the_table_is_wide_enough():
    commands = {args[0] for _, _, args, _, _, _ in BAD}
    assert len(BAD) >= 25 and commands == {"train", "attack", "report", "run", "inspect", "list"}
    assert sum(how == "sub" for _, how, *_ in BAD) >= 3


def test_attack_fails_before_creating_its_folder(files, tmp_path):
    """Validation comes before work: a bad name or number never even creates --out."""
    out = tmp_path / "deep" / "er" / "run"
    for bad in (["--attack", "nope"], ["--eps", "2"], ["--detector", "nope"], ["--threat", "black-box"]):
        args = [a.format(**files, out=out) for a in ATTACK] + bad
        code, stdout, stderr = invoke(args, tmp_path)
        error_line(code, stdout, stderr)
        assert not (tmp_path / "deep").exists()


def test_a_failure_after_work_began_removes_only_what_it_created(files, prior_run, tmp_path):
    """An existing run folder is left as it was; a new one (and its new parents) is removed."""
    out = tmp_path / "a" / "b" / "run"
    code, stdout, stderr = invoke(attack("--dataset", "npz:{npz_range}", replace={"--out": str(out)}), tmp_path)
    error_line(code, stdout, stderr)
    assert not (tmp_path / "a").exists()
    resumed = tmp_path / "resumed"
    shutil.copytree(prior_run, resumed)
    cells = sorted(p.name for p in (resumed / "cells").iterdir())
    argv = [a.format(**files, out=resumed) for a in ATTACK] + ["--force"]
    argv[argv.index("--model") + 1] = files["nan"]
    assert "non-finite" in error_line(*invoke(argv, tmp_path))
    assert cells and sorted(p.name for p in (resumed / "cells").iterdir()) == cells
    assert all((resumed / "cells" / c / "row.json").is_file() for c in cells)


# -- properties: any file gives a result or a RobenchError ----------------------------------------

SUITE_FRAGMENTS = [
    "dataset: digits", "dataset: npz:/no/such.npz", "dataset: [1, 2]", "models: [a.pt]", "models: []",
    "models:\n  - {name: m, path: [1]}", "models:\n  - {path: 3}", "models:\n  - {train: {defense: 3}}",
    "models:\n  - {name: x, train: {defense: gm, epochs: -1, params: [1]}}", "attacks: [fgsm]",
    "attacks: [{name: pgd, steps: 0}]", "attacks: [{name: pgd, eps: [x]}]", "attacks: [':']",
    "attacks: [{name: [pgd]}]", "attacks: [{name: pgd, steps: [1, 2]}]", "eps: [0.1, .nan, -1, x]", "eps: 0.1",
    "eps: [1e400]", "n: 1e400", "n: -3", "batch_size: true", "seed: 2020-01-01", "threats: [[3]]",
    "threats: black-box", "surrogate: {path: 3}", "surrogate: [x]", "detectors: [{a: 1}]", "device: 3",
    "executor: ray", "executor: [1]", "? [a, b]\n: 1", "? {a: 1}\n: 2", "1: 2", "null: 3", "a: &x [*x]",
    "a: &y {b: *y}", "x: !!python/object/apply:os.system ['echo pwned']", "models: !!binary aGVsbG8=",
    "models: !custom tag", "---\nb: 1", "\t- tab", "models: [a.pt]\nmodels: [b.pt]", "%YAML 1.1\n---", "...",
]
SUITE_KEYS = ["dataset", "models", "attacks", "eps", "threats", "detectors", "n", "batch_size", "seed",
              "device", "executor", "surrogate", "sanity", "out", "name", "path", "train", "defense", "params",
              "epochs", "steps", "zzz"]
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 10**20), st.floats(), st.sampled_from(SUITE_KEYS),
                  st.text(st.characters(blacklist_categories=("Cs",)), max_size=6))
_tree = st.recursive(_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                    st.dictionaries(st.sampled_from(SUITE_KEYS), inner, max_size=4)),
                     max_leaves=12)
_suite_text = st.one_of(
    st.lists(st.one_of(st.sampled_from(SUITE_FRAGMENTS), st.text(st.characters(blacklist_categories=("Cs",)),
                                                                  max_size=20)), max_size=6).map("\n".join),
    st.dictionaries(st.sampled_from(SUITE_KEYS), _tree, max_size=6).map(yaml.safe_dump),
)


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=_suite_text)
@example(text="a: &x [*x]\nmodels: [a.pt]\nattacks: [fgsm]\neps: [0.1]")
@example(text="models:\n  - {path: 3}\nattacks: [fgsm]\neps: [0.1]")
@example(text="? [a]\n: b\nmodels: [a.pt]")
@example(text="x: !!python/object/apply:os.system ['echo pwned']\nmodels: [a.pt]")
def test_suite_parser_never_crashes(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("suite") / "suite.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        suite = load_suite(str(path))
    except RobenchError as exc:  # a rejection is one line that names the file
        message = str(exc)
        assert str(path) in message and "\n" not in message.strip(), message
    else:  # an accepted file is a complete grid
        assert suite.models and suite.attacks and suite.eps, suite


@st.composite
def npz_arrays(draw):
    """Arrays shaped like a dataset often enough to get past the first checks."""
    n = draw(st.integers(0, 40))
    shape = draw(st.sampled_from([(n, 1, 8, 8), (n, 8, 8), (n, 4, 4, 3), (n, 3, 4, 4), (n, 2, 5, 5),
                                  (n, 1, 0, 0), (n, 8), (n, 1, 2, 2, 1), ()]))
    dtype = draw(st.sampled_from(["float32", "float64", "float16", "uint8", "int64", "bool", "complex64"]))
    unit = st.floats(0, 1, width=16) if dtype.startswith(("float", "complex")) else None
    x = draw(hnp.arrays(dtype, shape, elements=unit if draw(st.booleans()) else None))
    labels = draw(st.sampled_from([n, n, n, n + 1, 0]))
    y_dtype = draw(st.sampled_from(["int64", "int8", "uint64", "float64", "bool", "<U2"]))
    y_elems = st.integers(0, draw(st.sampled_from([1, 3, 9, 100]))) if y_dtype[0] in "iuf" else None
    y = draw(hnp.arrays(y_dtype, draw(st.sampled_from([(labels,), (labels,), (labels, 1), ()])),
                        elements=y_elems))
    arrays = {"x": x, "y": y}
    for key in draw(st.sets(st.sampled_from(["x", "y"]), max_size=1)):
        del arrays[key]
    return arrays


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(arrays=npz_arrays())
@example(arrays={"x": np.zeros((20, 1, 8, 8)), "y": np.array(3)})
@example(arrays={"x": np.zeros((20, 1, 0, 0)), "y": np.arange(20) % 2})
@example(arrays={"x": np.zeros((40, 1, 8, 8)), "y": np.arange(40) % 12})
@example(arrays={"x": np.full((20, 1, 2, 2), 1e300), "y": np.arange(20) % 2})
@example(arrays={"x": np.zeros((20, 1, 2, 2)), "y": np.array(["a"] * 20)})
def test_npz_loader_never_crashes(tmp_path_factory, arrays):
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    np.savez(path, **arrays)
    try:
        data = load_dataset(f"npz:{path}")
    except DataError:
        return
    assert data.x.dtype == torch.float32 and data.x.dim() == 4 and data.x.numel() > 0
    assert 0.0 <= float(data.x.min()) and float(data.x.max()) <= 1.0
    assert len(data.y) == len(data.x) and int(data.y.max()) < data.num_classes
    assert sorted(torch.cat(list(data.splits.values())).tolist()) == list(range(len(data.y)))


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    return untrained(tmp_path_factory.mktemp("ckpt") / "m.pt").read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)),
                                                  max_size=8))
def test_damaged_checkpoints_load_or_fail_cleanly(tmp_path_factory, checkpoint_bytes, cut, flips):
    data = bytearray(checkpoint_bytes[: max(1, len(checkpoint_bytes) - cut % len(checkpoint_bytes))])
    for where, mask in flips:
        data[where % len(data)] ^= mask
    path = tmp_path_factory.mktemp("damaged") / "m.pt"
    path.write_bytes(bytes(data))
    try:
        model = load_model(str(path))
    except CheckpointError:
        return
    assert torch.isfinite(model(torch.full((2, 1, 8, 8), 0.5))).all()
