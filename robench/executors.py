"""Executors: where the cells of a run are computed (this process, or Ray tasks).

Every cell is a pure function of (checkpoint, data indices, attack, eps,
threat, detectors, seed), so where it runs does not change its result; the
driver writes what comes back, and the final tables are sorted, so the files
are the same whatever the order of completion.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, List, Tuple

from robench.errors import UsageError


class LocalExecutor:
    """Cells one after another in this process."""

    def run(self, jobs, contexts, surrogate, cfg, quiet: bool) -> Iterator[Tuple[list, float]]:
        from robench.progress import progress_bar
        from robench.runner import run_cell

        bar = progress_bar(total=len(jobs), desc="cells", unit="cell", disable=quiet)
        for path, cell in jobs:
            t0 = time.perf_counter()
            outputs = run_cell(cell, contexts[path], surrogate, cfg, quiet)
            bar.update(1)
            yield outputs, time.perf_counter() - t0
        bar.close()


_WORKER_CACHE: Dict[Tuple[str, str], Any] = {}


def _ray_cell(path: str, cell, cfg) -> Tuple[list, float]:
    """Body of one Ray task: prepare the model (cached per worker) and run the cell."""
    import torch

    from robench.devices import resolve_device
    from robench.runner import _load, prepare_model, run_cell

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    key = (path, repr(cfg))
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()
        surrogate = _load(cfg.surrogate, cfg.arch, device) if cfg.surrogate else None
        _WORKER_CACHE[key] = (prepare_model(path, cfg, device), surrogate)
    ctx, surrogate = _WORKER_CACHE[key]
    with torch.inference_mode(False):
        outputs = run_cell(cell, ctx, surrogate, cfg, quiet=True)
    return outputs, time.perf_counter() - t0


class RayExecutor:
    """Cells as Ray tasks: one CPU each, or one GPU each when the device is CUDA.

    Connects to ``ray_address`` (an existing cluster, e.g. ``ray://head:10001``
    or ``auto``) or starts a local Ray instance.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("executor ray needs Ray: pip install 'robench[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            kwargs: Dict[str, Any] = {"address": address} if address else {"num_cpus": num_cpus}
            ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, **kwargs)

    def run(self, jobs, contexts, surrogate, cfg, quiet: bool) -> Iterator[Tuple[list, float]]:
        from robench.progress import progress_bar

        gpus = 1 if str(cfg.device).startswith("cuda") else 0
        task = self.ray.remote(num_cpus=1, num_gpus=gpus)(_ray_cell)
        pending: List[Any] = [task.remote(path, cell, cfg) for path, cell in jobs]
        bar = progress_bar(total=len(pending), desc="cells (ray)", unit="cell", disable=quiet)
        while pending:
            ready, pending = self.ray.wait(pending, num_returns=1)
            for ref in ready:
                bar.update(1)
                yield self.ray.get(ref)
        bar.close()


def make_executor(cfg) -> Any:
    """The executor a configuration names (``local`` or ``ray``)."""
    if cfg.executor == "local":
        return LocalExecutor()
    if cfg.executor == "ray":
        return RayExecutor(cfg.ray_address)
    raise UsageError(f"unknown executor '{cfg.executor}' (known: local, ray)")
