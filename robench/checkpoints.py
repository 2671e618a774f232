"""Checkpoints: robench's own format and the official GM-Loss code's, loaded safely.

Every file goes through ``torch.load(..., weights_only=True)``: a pickle that
would construct arbitrary objects (and so could run code) is refused before
anything in it executes. Nothing is ever loaded with ``weights_only=False``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> Any:
    """``torch.load`` with ``weights_only=True``, every failure a :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: the file is empty")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"checkpoint {path}: refused, it contains Python objects that are not plain "
                f"tensors and containers (loading them could run code)") from None
        raise CheckpointError(f"checkpoint {path}: not a readable PyTorch checkpoint ({_short(exc)})") from None
    except PermissionError:
        raise CheckpointError(f"checkpoint {path}: permission denied") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError,
            IndexError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: not a readable PyTorch checkpoint ({_short(exc)})") from None


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
    model = build_model(info)
    _load_state(model, state, path)
    return model.to(device).freeze()


def build_model(info: ModelInfo) -> RobustModel:
    from robench.errors import RobenchError

    try:
        arch_cls = registry("archs").get(info.arch)
    except RobenchError as exc:
        raise CheckpointError(f"checkpoint arch: {exc}") from None
    net = arch_cls(**info.arch_kwargs)
    return RobustModel(net, info)


def _load_state(model: RobustModel, state: Dict[str, torch.Tensor], path) -> None:
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()
           and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path}: non-finite (NaN or Inf) weights in {', '.join(bad[:3])}")
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        missing, unexpected, shapes = _diff_state(model.net.state_dict(), state)
        parts = [f"missing {', '.join(missing[:3])}" if missing else "",
                 f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
                 f"wrong shape for {', '.join(shapes[:3])}" if shapes else ""]
        detail = "; ".join(p for p in parts if p) or _short(exc)
        raise CheckpointError(
            f"checkpoint {path}: weights do not match arch {model.info.arch}: {detail}") from None


def _diff_state(expected: Dict[str, torch.Tensor], got: Dict[str, torch.Tensor]):
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shapes = [k for k in expected if k in got and torch.is_tensor(got[k]) and got[k].shape != expected[k].shape]
    return missing, unexpected, shapes


def _robench_info(obj: Dict[str, Any], path) -> Tuple[ModelInfo, Dict[str, torch.Tensor]]:
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version!r} is newer than this robench reads ({FORMAT_VERSION})")
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
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path}: state_dict is not a dict")
    return info, state


def _official_info(obj: Any, path, arch: Optional[str]) -> Tuple[ModelInfo, Dict[str, torch.Tensor]]:
    state = obj.get("net") if isinstance(obj, dict) and isinstance(obj.get("net"), dict) else obj
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
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
    in_ch = int(first_conv.shape[1]) if first_conv is not None else (1 if mnist else 3)
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


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
