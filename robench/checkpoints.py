"""Checkpoints: robench's own format and the official GM-Loss code's, loaded safely.

Every file goes through ``torch.load(..., weights_only=True)``: a pickle that
would construct arbitrary objects (and so could run code) is refused before
anything in it executes. Nothing is ever loaded with ``weights_only=False``.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import math
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from robench.data import CIFAR_NORM, MNIST_NORM
from robench.errors import CheckpointError
from robench.models import ModelInfo, RobustModel
from robench.registry import registry

FORMAT = "robench-checkpoint"
FORMAT_VERSION = 1
OFFICIAL = "official-gm-loss"


def save_checkpoint(model: RobustModel, path: str | os.PathLike) -> Path:
    """Write ``model`` atomically (temporary file in the same folder, then rename)."""
    from robench import __version__

    info = model.info
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "robench_version": __version__,
        **{k: v for k, v in info.as_dict().items() if k not in ("source", "name")},
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.net.state_dict().items()},
    }
    return atomic_torch_save(payload, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename into place.

    Killed at any moment, ``path`` is either the old file, absent, or the whole new one.
    A failed write (disk full, permission) raises :class:`OSError` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a checkpoint is shared like any file
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, RuntimeError):  # torch reports a failed write (disk full) as RuntimeError
            raise OSError(errno.EIO, f"cannot write the checkpoint ({_short(exc)})", str(path)) from None
        if isinstance(exc, OSError) and not exc.filename:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of earlier saves to ``path`` whose process is gone (killed mid-write)."""
    if os.name != "posix":
        return
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True``, every failure a :class:`CheckpointError`.

    A pickle that names any global outside torch's allowlist (``os.system``, a
    class, ...) is refused before anything in it runs.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: is a folder, not a checkpoint file")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint {path}: permission denied")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: the file is empty")
    try:
        with warnings.catch_warnings():  # e.g. "unusual pickle protocol" on a damaged file: the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise CheckpointError(f"checkpoint {path}: permission denied") from None
    except Exception as exc:  # anything torch.load raises on a bad file is the file's fault
        raise CheckpointError(f"checkpoint {path}: {_why_unreadable(path, exc)}") from None


def _why_unreadable(path: Path, exc: BaseException) -> str:
    text = str(exc)
    blocked = re.search(r"GLOBAL ([\w.]+)", text)
    if isinstance(exc, pickle.UnpicklingError) and (blocked or "Unsupported global" in text):
        what = f" ({blocked.group(1)})" if blocked else ""
        return (f"refused: it contains Python code or objects{what}, not just tensors and containers; "
                f"loading it could run code")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(b"PK\x03\x04") and not _zip_has_pickle(path):
        return "not a PyTorch checkpoint (a zip archive without data.pkl)"
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or _is_tar(path)):
        return "not a PyTorch checkpoint (neither a zip archive nor a pickle)"
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    return f"corrupt or truncated PyTorch checkpoint ({detail.group(1)[:200] if detail else _short(exc)})"


def _zip_has_pickle(path: Path) -> bool:
    """Whether a zip file looks like torch's (True when it is too damaged to tell)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any(name.endswith("data.pkl") for name in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return True


def _is_tar(path: Path) -> bool:
    import tarfile

    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False


def load_model(path: str | os.PathLike, arch: Optional[str] = None,
               device: str | torch.device = "cpu") -> RobustModel:
    """Load a robench or official GM-Loss checkpoint as a frozen :class:`RobustModel`.

    Args:
        path: the checkpoint file.
        arch: architecture name, for official checkpoints whose arch cannot be inferred.
        device: where to put the model.
    """
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        info, state = _robench_info(obj, path)
    else:
        info, state = _official_info(obj, path, arch)
    info.name = Path(path).stem
    _check_shapes(info, state, path)
    check_info(info, path)
    model = build_model(info, path)
    _load_state(model, state, path)
    model.freeze()
    _check_runs(model, path)
    return model.to(device)


def build_model(info: ModelInfo, path: Optional[str | os.PathLike] = None) -> RobustModel:
    """The (untrained) network ``info`` describes, with its normalisation.

    Raises:
        CheckpointError: unknown arch, or ``arch_kwargs`` it cannot be built from.
    """
    from robench.errors import RobenchError

    where = f"checkpoint {path}" if path is not None else f"arch {info.arch}"
    try:
        arch_cls = registry("archs").get(info.arch)
        net = arch_cls(**info.arch_kwargs)
    except RobenchError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
        raise CheckpointError(f"{where}: arch {info.arch} cannot be built with {_clip(info.arch_kwargs)} "
                              f"({_short(exc)})") from None
    return RobustModel(net, info)


def check_info(info: ModelInfo, path) -> None:
    """Refuse metadata that contradicts itself (it would fail later, far from the cause)."""
    problems = []
    shape, kw = tuple(info.input_shape), info.arch_kwargs
    if len(shape) != 3 or min(shape) < 1:
        problems.append(f"input_shape {list(shape)} is not (channels, height, width)")
    else:
        if kw.get("in_channels", shape[0]) != shape[0]:
            problems.append(f"input_shape has {shape[0]} channels but the arch takes {kw['in_channels']}")
        if "input_size" in kw and shape[1:] != (kw["input_size"],) * 2:
            problems.append(f"input_shape {list(shape)} but the arch is built for {kw['input_size']} pixels")
        if len(info.mean) != shape[0] or len(info.std) != shape[0]:
            problems.append(f"mean/std have {len(info.mean)}/{len(info.std)} values for {shape[0]} channels")
    if not all(math.isfinite(m) for m in info.mean) or not all(math.isfinite(s) and s > 0 for s in info.std):
        problems.append(f"mean {_clip(list(info.mean))} / std {_clip(list(info.std))} must be finite with std > 0")
    for key in ("num_classes", "feature_dim"):
        declared = getattr(info, key)
        if declared < 1:
            problems.append(f"{key} is {declared}")
        elif key in kw and kw[key] != declared:
            problems.append(f"{key} is {declared} but the arch is built with {kw[key]}")
    if problems:
        raise CheckpointError(f"checkpoint {path}: inconsistent metadata: {'; '.join(problems)}")


def _check_shapes(info: ModelInfo, state: Dict[str, Any], path) -> None:
    """Compare ``state`` with the arch built on the meta device: no memory, whatever the kwargs say."""
    try:
        with torch.device("meta"):
            expected = registry("archs").get(info.arch)(**info.arch_kwargs).state_dict()
    except Exception:  # unknown arch, bad kwargs, or no meta support: the real build reports
        return
    missing, unexpected, shapes = _diff_state(expected, state)
    if missing or unexpected or shapes:
        raise CheckpointError(f"checkpoint {path}: weights do not match arch {info.arch}: "
                              f"{_state_detail(missing, unexpected, shapes)}")


def _check_runs(model: RobustModel, path) -> None:
    """One forward pass on the declared input shape must give finite (1, K) logits and (1, D) features."""
    shape = tuple(model.info.input_shape)
    try:
        with torch.no_grad():
            f, logits = model.features_and_logits(torch.full((1, *shape), 0.5))
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: the model does not run on its input shape "
                              f"{list(shape)} ({_short(exc)})") from None
    if tuple(logits.shape) != (1, model.num_classes) or tuple(f.shape) != (1, model.info.feature_dim):
        raise CheckpointError(f"checkpoint {path}: the model gives {tuple(logits.shape)[1:]} class scores and "
                              f"{tuple(f.shape)[1:]} features, but declares {model.num_classes} classes and "
                              f"feature_dim {model.info.feature_dim}")
    if not (torch.isfinite(logits).all() and torch.isfinite(f).all()):
        raise CheckpointError(f"checkpoint {path}: the model's outputs are not finite (NaN or Inf)")


def _load_state(model: RobustModel, state: Dict[str, torch.Tensor], path) -> None:
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()
           and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path}: non-finite (NaN or Inf) weights in {', '.join(bad[:3])}")
    try:
        model.net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        missing, unexpected, shapes = _diff_state(model.net.state_dict(), state)
        detail = _state_detail(missing, unexpected, shapes) or _short(exc)
        raise CheckpointError(
            f"checkpoint {path}: weights do not match arch {model.info.arch}: {detail}") from None


def _state_detail(missing, unexpected, shapes) -> str:
    parts = [f"missing {', '.join(missing[:3])}" if missing else "",
             f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
             f"wrong shape for {', '.join(shapes[:3])}" if shapes else ""]
    return "; ".join(p for p in parts if p)


def _diff_state(expected: Dict[str, torch.Tensor], got: Dict[str, torch.Tensor]):
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and (not torch.is_tensor(got[k]) or got[k].shape != expected[k].shape)]
    return missing, unexpected, shapes


def _robench_info(obj: Dict[str, Any], path) -> Tuple[ModelInfo, Dict[str, torch.Tensor]]:
    version = obj.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"checkpoint {path}: robench checkpoint without a valid format_version ({_clip(version)})")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version} is newer than this robench reads ({FORMAT_VERSION})")
    try:
        info = ModelInfo(
            arch=str(obj["arch"]), arch_kwargs=dict(obj["arch_kwargs"]),
            defense=str(obj["defense"]), defense_params=dict(obj.get("defense_params", {})),
            dataset=str(obj["dataset"]), num_classes=int(obj["num_classes"]),
            feature_dim=int(obj["feature_dim"]), input_shape=tuple(int(v) for v in obj["input_shape"]),
            mean=tuple(float(v) for v in obj["mean"]), std=tuple(float(v) for v in obj["std"]),
            split=dict(obj.get("split", {})), metrics=dict(obj.get("metrics", {})), source="robench",
        )
        state = obj["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path}: robench checkpoint is missing or has a bad field ({_short(exc)})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"checkpoint {path}: state_dict is not a dict of named tensors")
    _check_split(info.split, path)
    return info, state


def _check_split(split: Dict[str, Any], path) -> None:
    """The split record later commands rebuild the test set from (seed and train half)."""
    seed, half = split.get("seed", 0), split.get("train_half")
    if not isinstance(seed, int) or isinstance(seed, bool) or half not in (None, "a", "b"):
        raise CheckpointError(f"checkpoint {path}: bad split record (seed {_clip(seed)}, train_half {_clip(half)})")


def _official_info(obj: Any, path, arch: Optional[str]) -> Tuple[ModelInfo, Dict[str, torch.Tensor]]:
    state = obj.get("net") if isinstance(obj, dict) and isinstance(obj.get("net"), dict) else obj
    if not isinstance(state, dict) or not state or not all(isinstance(k, str) and torch.is_tensor(v)
                                                           for k, v in state.items()):
        raise CheckpointError(
            f"checkpoint {path}: neither a robench checkpoint nor a state_dict of the official GM-Loss code")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    arch = arch or _infer_arch(state)
    if arch is None:
        raise CheckpointError(f"checkpoint {path}: cannot infer the architecture; pass --arch")
    head_name = {"gm-mnist-net": "ip2", "resnet20": "linear"}.get(arch, "head")
    is_gm = f"{head_name}.mu" in state
    head_w = state.get(f"{head_name}.mu" if is_gm else f"{head_name}.weight")
    if head_w is None or head_w.dim() != 2:
        raise CheckpointError(f"checkpoint {path}: no head '{head_name}' (mu or weight) for arch {arch}")
    k, d = head_w.shape
    mnist = arch != "resnet20"
    first_conv = state.get("conv1_1.weight" if arch == "gm-mnist-net" else "conv1.weight")
    in_ch = int(first_conv.shape[1]) if first_conv is not None and first_conv.dim() == 4 else (1 if mnist else 3)
    side = 28 if mnist else 32
    mean, std = MNIST_NORM if mnist else CIFAR_NORM
    info = ModelInfo(
        arch=arch, arch_kwargs={"num_classes": int(k), "feature_dim": int(d), "head": "gm" if is_gm else "linear",
                                "in_channels": in_ch, "input_size": side},
        defense="gm" if is_gm else "softmax", defense_params={}, dataset="mnist" if mnist else "cifar10",
        num_classes=int(k), feature_dim=int(d), input_shape=(in_ch, side, side), mean=mean, std=std,
        metrics={"acc": float(obj["acc"])} if isinstance(obj, dict) and "acc" in obj and _is_number(obj["acc"]) else {},
        source=OFFICIAL,
    )
    return info, state


def _infer_arch(state: Dict[str, torch.Tensor]) -> Optional[str]:
    if "conv1_1.weight" in state and "ip1.weight" in state:
        return "gm-mnist-net"
    if "layer1.0.conv1.weight" in state and ("linear.mu" in state or "linear.weight" in state):
        return "resnet20"
    return None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1)


def describe(path: str | os.PathLike, arch: Optional[str] = None) -> Dict[str, Any]:
    """Metadata of a checkpoint of either kind (what ``robench inspect`` prints)."""
    model = load_model(path, arch=arch)
    info = model.info.as_dict()
    info["head"] = "gm" if model.is_gm else "linear"
    info["parameters"] = sum(p.numel() for p in model.net.parameters())
    info["sha256"] = file_sha256(path)
    info["path"] = str(path)
    return info


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _clip(value: Any, limit: int = 80) -> str:
    """``repr`` of a value read from a file, cut short (a hostile file can hold megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(exc: BaseException) -> str:
    """The first sentence of an exception's message (torch's run on for lines)."""
    text = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(exc).strip()).splitlines()
    first = (text[0] if text else "") or type(exc).__name__
    return first.split(". ")[0].rstrip(".")[:200]
