"""Datasets: splits, the torchvision on-disk formats, npz validation."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from robench.data import Dataset, check_dataset, fraction_sizes, load_dataset, stratified_splits
from robench.errors import DataError, UnknownNameError
from robench.registry import registry


def test_mnist5k_splits_are_stratified_fixed_and_disjoint():
    d = load_dataset("mnist5k", seed=0)
    assert d.x.shape == (5000, 1, 28, 28) and d.x.dtype == torch.float32
    assert 0.0 <= float(d.x.min()) and float(d.x.max()) <= 1.0
    sizes = {k: len(v) for k, v in d.splits.items()}
    assert sizes == {"train": 3500, "val": 500, "test": 1000}
    all_idx = torch.cat(list(d.splits.values()))
    assert len(set(all_idx.tolist())) == 5000
    assert torch.bincount(d.y[d.splits["test"]]).tolist() == [100] * 10
    again = load_dataset("mnist5k", seed=0)
    assert all(torch.equal(d.splits[k], again.splits[k]) for k in d.splits)
    other = load_dataset("mnist5k", seed=1)
    assert not torch.equal(d.splits["test"], other.splits["test"])


def test_train_halves_are_disjoint_and_cover_train():
    a = load_dataset("digits", train_half="a")
    b = load_dataset("digits", train_half="b")
    full = load_dataset("digits")
    ia, ib = set(a.splits["train"].tolist()), set(b.splits["train"].tolist())
    assert not ia & ib and ia | ib == set(full.splits["train"].tolist())
    assert torch.equal(a.splits["test"], full.splits["test"])


def test_digits_shape():
    d = load_dataset("digits")
    assert d.input_shape == (1, 8, 8) and d.num_classes == 10


def _write_idx(path, arr: np.ndarray, magic: int) -> None:
    with open(path, "wb") as fh:
        fh.write(struct.pack(">I", magic))
        for dim in arr.shape:
            fh.write(struct.pack(">I", dim))
        fh.write(arr.astype(np.uint8).tobytes())


def _write_mnist(root, train_labels: np.ndarray, test_labels: np.ndarray) -> str:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, labels in (("train", train_labels), ("t10k", test_labels)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (len(labels), 28, 28)), 0x803)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", labels, 0x801)
    return f"mnist:{root}"


def test_mnist_idx_files_read_through_torchvision(tmp_path):
    d = load_dataset(_write_mnist(tmp_path, np.arange(200) % 10, np.arange(50) % 10))
    assert d.x.shape == (250, 1, 28, 28) and float(d.x.max()) <= 1.0
    assert len(d.splits["test"]) == 50 and len(d.splits["val"]) == 20


def _write_cifar(root, train_labels: np.ndarray, test_labels: np.ndarray) -> str:
    """Five train batches with ``train_labels`` each and a test batch with ``test_labels``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = test_labels if name == "test_batch" else train_labels
        batch = {"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), "labels": list(labels)}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    return f"cifar10:{root}"


def test_cifar10_batches_read_through_torchvision(tmp_path):
    d = load_dataset(_write_cifar(tmp_path, np.arange(20) % 10, np.arange(20) % 10))
    assert d.x.shape == (120, 3, 32, 32) and len(d.splits["test"]) == 20


@pytest.mark.parametrize("spec", ["mnist:/no/such/dir", "cifar10:/no/such/dir", "npz:/no/such.npz", "mnist"])
def test_missing_paths_are_clear_errors(spec):
    with pytest.raises(DataError):
        load_dataset(spec)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no readable MNIST"):
        load_dataset(f"mnist:{tmp_path}")
    with pytest.raises(DataError, match="CIFAR-10"):
        load_dataset(f"cifar10:{tmp_path}")


def test_unknown_dataset_suggests():
    with pytest.raises(UnknownNameError, match="mnist5k"):
        load_dataset("mnist5")


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_nhwc_is_transposed(tmp_path):
    x = np.random.default_rng(0).random((40, 6, 6, 3)).astype(np.float32)
    d = load_dataset(_npz(tmp_path, x=x, y=np.arange(40) % 4))
    assert d.input_shape == (3, 6, 6) and d.num_classes == 4


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((20, 1, 4, 4))}, "missing array"),
    ({"x": np.full((20, 1, 4, 4), 2.0), "y": np.arange(20) % 2}, r"\[0, 1\]"),
    ({"x": np.zeros((20, 4)), "y": np.arange(20) % 2}, "dimensions"),
    ({"x": np.zeros((20, 1, 4, 4)), "y": np.arange(20) - 5}, ">= 0"),
    ({"x": np.zeros((20, 1, 4, 4)), "y": np.arange(19) % 2}, "labels"),
])
def test_npz_bad_contents(tmp_path, arrays, match):
    with pytest.raises(DataError, match=match):
        load_dataset(_npz(tmp_path, **arrays))


# -- datasets no model can be honestly trained or evaluated on: one line at load time ---------

TEN = np.arange(200) % 10


@pytest.mark.parametrize("write, train_labels, test_labels, match", [
    (_write_mnist, np.full(200, 3), np.full(50, 3), "needs at least two classes, found 1"),
    (_write_mnist, TEN, np.arange(50) % 9, r"class\(es\) 9 of 10 have no image in the test split"),
    (_write_mnist, np.where(TEN == 4, 12, TEN), np.arange(50) % 10, r"labels must be in \[0, 10\).*found 0 to 12"),
    (_write_cifar, np.arange(20) % 9, np.arange(20) % 10, r"class\(es\) 9 of 10 have no image in the train split"),
    (_write_cifar, np.zeros(20, int), np.zeros(20, int), "needs at least two classes"),
    (_write_cifar, np.arange(20) % 10, np.full(20, 10), r"labels must be in \[0, 10\)"),
])
def test_official_files_with_bad_classes_are_refused(tmp_path, write, train_labels, test_labels, match):
    with pytest.raises(DataError, match=match):
        load_dataset(write(tmp_path, train_labels, test_labels))


@pytest.mark.parametrize("labels, match", [
    (np.zeros(40, int), "needs at least two classes, found 1 \\(labels: 0\\)"),
    (np.full(40, 7), "needs at least two classes"),
    (np.arange(40) % 2 * 2, r"class\(es\) 1 of 3 have no image at all"),
])
def test_npz_with_bad_classes_is_refused(tmp_path, labels, match):
    with pytest.raises(DataError, match=match):
        load_dataset(_npz(tmp_path, x=np.zeros((40, 1, 4, 4)), y=labels))


def test_npz_with_a_nan_pixel_is_refused(tmp_path):
    x = np.zeros((40, 1, 4, 4))
    x[3, 0, 1, 1] = np.nan
    with pytest.raises(DataError, match="1 NaN/Inf"):
        load_dataset(_npz(tmp_path, x=x, y=np.arange(40) % 2))


def test_one_class_npz_is_refused_by_robench_train(tmp_path):
    """Issue 15: an all-one-class npz trained 'successfully' to clean accuracy 1.0."""
    from click.testing import CliRunner

    from robench.cli import cli

    spec = _npz(tmp_path, x=np.zeros((40, 1, 8, 8)), y=np.zeros(40, int))
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(cli, ["train", "--defense", "softmax", "--dataset", spec, "--epochs", "1",
                                      "--out", str(out), "--quiet"])
    assert result.exit_code == 1 and "needs at least two classes" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


@pytest.fixture
def plugin_dataset():
    """Registers ``planted``, a dataset plugin whose arrays are set by the test (it bypasses robench's loaders)."""
    arrays = {}

    def load(arg=None, seed=0):
        x, y = arrays["x"], arrays["y"]
        splits = stratified_splits(y.numpy(), fraction_sizes(len(y)), seed)
        return Dataset("planted", x, y, int(y.max()) + 1, (0.5,), (0.25,), splits, seed)

    registry("datasets").register("planted", load)
    yield arrays
    registry("datasets").unregister("planted")


@pytest.mark.parametrize("value, match", [(float("nan"), "1 NaN or Inf"), (float("inf"), "1 NaN or Inf"),
                                          (1.5, r"in \[0, 1\], found values in \[0, 1.5\]"),
                                          (-0.25, r"found values in \[-0.25, 1\]")])
def test_every_dataset_kind_is_checked_at_load_time(plugin_dataset, value, match):
    x = torch.rand(60, 1, 4, 4)
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0
    plugin_dataset.update(x=x, y=torch.arange(60) % 3)
    assert load_dataset("planted").num_classes == 3
    x[5, 0, 2, 2] = value
    with pytest.raises(DataError, match=match):
        load_dataset("planted")


def test_builtin_datasets_pass_the_checks():
    for spec in ("digits", "mnist5k"):
        data = load_dataset(spec)
        assert check_dataset(data) is data
