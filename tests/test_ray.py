"""The Ray executor: the same grid as Ray tasks gives byte-identical files to the local executor."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

ray = pytest.importorskip("ray")
from robench.schema import parquet_available  # noqa: E402

SAMPLES = "samples.parquet" if parquet_available() else "samples.csv"  # the run's per-sample records


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from robench.checkpoints import save_checkpoint
    from robench.training import TrainConfig, train

    cfg = TrainConfig(defense="softmax", dataset="digits", epochs=1, feature_dim=8, seed=0, device="cpu")
    return str(save_checkpoint(train(cfg, quiet=True), tmp_path_factory.mktemp("ckpt") / "tiny.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("cascade", [False, True])
def test_ray_gives_the_same_files_as_local(ckpt, local_ray, tmp_path, cascade):
    from robench.config import RunConfig
    from robench.runner import run_attack

    grid = dict(models=[ckpt], attacks=["fgsm", "pgd:steps=3"], eps=[0.1, 0.2], detectors=["max-softmax"],
                threats=["gray-box", "white-box"], n=20, batch_size=10, device="cpu", cascade=cascade)
    run_attack(RunConfig(**grid, executor="local"), str(tmp_path / "local"), quiet=True)
    summary = run_attack(RunConfig(**grid, executor="ray"), str(tmp_path / "ray"), quiet=True).text()
    assert ("4 cells run" if cascade else "8 cells run") + ", 0 cached" in summary  # a chain is one task
    for name in ("results.csv", SAMPLES, "sanity.csv"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert ray.is_initialized()  # a Ray the caller started is left running


def test_user_errors_in_tasks_arrive_as_themselves(ckpt, local_ray, monkeypatch):
    from robench.errors import AttackVerificationError
    from robench.executors import RayExecutor

    def broken(*args, **kwargs):
        raise AttackVerificationError("x_adv outside the eps-ball")

    executor = RayExecutor()
    monkeypatch.setattr(executor, "ray", _Wrapped(ray, broken))
    ctx = SimpleNamespace(model=SimpleNamespace(device=torch.device("cpu")))
    with pytest.raises(AttackVerificationError, match="outside the eps-ball") as err:
        from robench.executors import Task

        list(executor.run(broken, [Task("m", "cell")], {"m": ctx}, None, SimpleNamespace(device="cpu", threads=1),
                          True))
    assert type(err.value) is AttackVerificationError  # not a RayTaskError: the CLI prints one line


class _Wrapped:
    """``ray`` whose tasks run ``body`` instead of a cell."""

    def __init__(self, ray_module, body):
        self._ray, self._body = ray_module, body

    def __getattr__(self, name):
        return getattr(self._ray, name)

    def remote(self, **options):
        return lambda fn: self._ray.remote(**options)(self._body)


def test_a_cell_does_not_depend_on_the_callers_thread_count(ckpt):
    """Sums in CPU matrix products depend on the thread count; a cell fixes it (cfg.threads)."""
    from robench.config import RunConfig
    from robench.evaluate import run_job
    from robench.plan import plan_cells
    from robench.prepare import prepare_model

    cfg = RunConfig(models=[ckpt], attacks=["pgd:steps=3"], eps=[0.2], detectors=["max-softmax"],
                    n=20, batch_size=10, device="cpu", threads=1)
    ctx = prepare_model(ckpt, cfg, torch.device("cpu"))
    cell = plan_cells(cfg, ctx.plan_key())[0]
    outputs = []
    for threads in (1, 2):  # a driver with 1 thread, a Ray worker with 2
        torch.set_num_threads(threads)
        (result,) = run_job(cell, ctx, None, cfg, quiet=True).cells
        assert torch.get_num_threads() == threads  # restored
        outputs.append((result.row, result.samples.to_csv(), result.adv_features.tobytes(),
                        result.x_adv.numpy().tobytes()))
    torch.set_num_threads(1)
    assert outputs[0] == outputs[1]
