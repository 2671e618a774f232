"""Checkpoints: robench's format round-trips; official GM-Loss layouts load and match."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import pytest

import robench
from robench.archs import GMMnistNet, ResNet20
from robench.checkpoints import read_checkpoint, save_checkpoint
from robench.errors import CheckpointError


def _randomise(net: torch.nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in net.state_dict().items():
        if k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        elif v.is_floating_point():
            state[k] = torch.randn(v.shape, generator=g) * 0.1
        else:
            state[k] = v.clone()
    return state


def _reference_mnist(state: dict, x: torch.Tensor, gm: bool) -> torch.Tensor:
    """The official MNIST net's forward, written out with the functional API."""
    h = x
    for stage in (1, 2, 3):
        for idx in (1, 2):
            h = F.conv2d(h, state[f"conv{stage}_{idx}.weight"], state[f"conv{stage}_{idx}.bias"], padding=2)
            h = F.prelu(h, state[f"prelu{stage}_{idx}.weight"])
        h = F.max_pool2d(h, 2)
    f = h.reshape(-1, 128 * 3 * 3) @ state["ip1.weight"].t() + state["ip1.bias"]
    if gm:
        mu = state["ip2.mu"]
        return -0.5 * ((f * f).sum(1, keepdim=True) - 2 * f @ mu.t() + (mu * mu).sum(1)[None])
    return f @ state["ip2.weight"].t() + state["ip2.bias"]


def _reference_resnet20(state: dict, x: torch.Tensor) -> torch.Tensor:
    def bn(h, p):
        return F.batch_norm(h, state[p + ".running_mean"], state[p + ".running_var"],
                            state[p + ".weight"], state[p + ".bias"], training=False, eps=1e-5)

    h = F.relu(bn(F.conv2d(x, state["conv1.weight"], padding=1), "bn1"))
    for layer, planes in ((1, 16), (2, 32), (3, 64)):
        for b in range(3):
            p = f"layer{layer}.{b}"
            stride = 2 if layer > 1 and b == 0 else 1
            out = F.relu(bn(F.conv2d(h, state[p + ".conv1.weight"], stride=stride, padding=1), p + ".bn1"))
            out = bn(F.conv2d(out, state[p + ".conv2.weight"], padding=1), p + ".bn2")
            short = h if stride == 1 else F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
            h = F.relu(out + short)
    f = F.avg_pool2d(h, h.shape[3]).flatten(1)
    mu = state["linear.mu"]
    return -0.5 * ((f * f).sum(1, keepdim=True) - 2 * f @ mu.t() + (mu * mu).sum(1)[None])


@pytest.mark.parametrize("gm", [True, False])
def test_official_mnist_state_dict_matches_reference(tmp_path, gm):
    state = _randomise(GMMnistNet(feature_dim=2, head="gm" if gm else "linear"), seed=1)
    path = tmp_path / "mnist_Net2_loss_gm.pt"
    torch.save(state, path)  # the official MNIST code saves a plain state_dict
    model = robench.load_model(str(path))
    assert model.is_gm == gm and model.info.source == "official-gm-loss"
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    expected = _reference_mnist(state, (x - 0.1307) / 0.3081, gm)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_official_cifar_dataparallel_checkpoint_matches_reference(tmp_path):
    state = _randomise(ResNet20(head="gm"), seed=3)
    path = tmp_path / "ckpt.pth"
    torch.save({"net": {f"module.{k}": v for k, v in state.items()}, "acc": 91.2, "epoch": 199}, path)
    model = robench.load_model(str(path))
    assert model.info.arch == "resnet20" and model.is_gm and model.info.metrics == {"acc": 91.2}
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2023, 0.1994, 0.2010]).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), _reference_resnet20(state, (x - mean) / std), atol=1e-5, rtol=1e-5)


def test_robench_checkpoint_round_trip(tmp_path, gm_model, digits_batch):
    path = save_checkpoint(gm_model, tmp_path / "gm.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "robench-checkpoint" and raw["defense"] == "gm"
    assert {"format_version", "arch", "arch_kwargs", "defense_params", "dataset", "split", "mean", "std",
            "num_classes", "feature_dim", "metrics", "robench_version", "state_dict"} <= set(raw)
    loaded = robench.load_model(str(path))
    x, _ = digits_batch
    torch.testing.assert_close(loaded(x), gm_model(x))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert not list(tmp_path.glob(".*.tmp"))


def test_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 10, b"PK\x03\x04broken zip"])
def test_broken_files_are_clear_errors(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        robench.load_model(str(path))


def test_arch_mismatch_and_nan_weights(tmp_path, gm_model):
    path = save_checkpoint(gm_model, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    raw["arch"] = "gm-mnist-net"
    raw["arch_kwargs"].update(in_channels=1, input_size=28)
    torch.save(raw, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not match arch gm-mnist-net"):
        robench.load_model(str(tmp_path / "mismatch.pt"))
    raw = torch.load(path, weights_only=True)
    next(iter(raw["state_dict"].values()))[0] = float("nan")
    torch.save(raw, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match="non-finite"):
        robench.load_model(str(tmp_path / "nan.pt"))


def test_truncated_checkpoint(tmp_path, gm_model):
    path = save_checkpoint(gm_model, tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        robench.load_model(str(tmp_path / "cut.pt"))
