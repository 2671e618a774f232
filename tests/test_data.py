"""Datasets: splits, the torchvision on-disk formats, npz validation."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from robench.data import load_dataset
from robench.errors import DataError, UnknownNameError


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


def test_mnist_idx_files_read_through_torchvision(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("t10k", 50)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), 0x803)
        _write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 10, 0x801)
    d = load_dataset(f"mnist:{tmp_path}")
    assert d.x.shape == (250, 1, 28, 28) and float(d.x.max()) <= 1.0
    assert len(d.splits["test"]) == 50 and len(d.splits["val"]) == 20


def test_cifar10_batches_read_through_torchvision(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), "labels": list(np.arange(20) % 10)}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    d = load_dataset(f"cifar10:{tmp_path}")
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
