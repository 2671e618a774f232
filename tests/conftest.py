"""Shared fixtures: tiny models trained once per session on scikit-learn's digits."""

from __future__ import annotations

import pytest
import torch

from robench.data import load_dataset
from robench.training import TrainConfig, train


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    The models here are tiny: on a shared 2-core machine a second intra-op
    thread only oversubscribes the cores (measured 10x slower under load), and
    Ray workers run 1-CPU tasks with one thread, so results compare like with like.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits with robench's default splits."""
    return load_dataset("digits", seed=0)


def _tiny(defense: str, digits, epochs: int = 8, **params):
    cfg = TrainConfig(defense=defense, dataset="digits", arch="small-cnn", epochs=epochs,
                      seed=0, device="cpu", feature_dim=16, defense_params=params)
    return train(cfg, data=digits, quiet=True)


@pytest.fixture(scope="session")
def softmax_model(digits):
    """A small-cnn softmax model on digits (about 95% clean test accuracy)."""
    return _tiny("softmax", digits)


@pytest.fixture(scope="session")
def gm_model(digits):
    """A small-cnn GM-loss model on digits."""
    return _tiny("gm", digits, ramp_epochs=2)


@pytest.fixture(scope="session")
def digits_batch(digits):
    """The first 128 test points."""
    return digits.split("test", 128)


def ctrl_c_deliverable() -> None:
    """``preexec_fn`` for a child that is sent Ctrl-C: restore SIGINT's default action, so the child's
    Python installs its KeyboardInterrupt handler even when the tests run in the background
    (``nohup``, ``cmd &``), where the child would inherit SIGINT ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
