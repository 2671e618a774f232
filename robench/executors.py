"""Executors: where the cells of a run are computed (this process, or Ray tasks).

Every cell is a pure function of (checkpoint, data indices, attack, eps,
threat, detectors, seed): its randomness comes from its own generator seeded
from the cell key, never from the global RNG. So where it runs does not change
its result; the driver writes what comes back, and the final tables are
sorted, so the files are the same whatever the order of completion.

The Ray executor ships the driver's prepared models (weights, test points and
fitted detectors) to the tasks through the object store, so a task neither
reads the checkpoint path nor refits a detector: workers on other machines
need robench installed, not the files.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

from robench.errors import RobenchError, UsageError


class LocalExecutor:
    """Cells one after another in this process."""

    def run(self, jobs, contexts, surrogate, cfg, quiet: bool) -> Iterator[Tuple[list, float]]:
        from robench.progress import progress_bar
        from robench.runner import run_cell

        bar = progress_bar(total=len(jobs), desc="cells", unit="cell", disable=quiet)
        try:
            for path, cell in jobs:
                t0 = time.perf_counter()
                outputs = run_cell(cell, contexts[path], surrogate, cfg, quiet)
                bar.update(1)
                yield outputs, time.perf_counter() - t0
        finally:
            bar.close()


def _ray_cell(cell, ctx, surrogate, cfg) -> Tuple[list, float]:
    """Body of one Ray task (Ray resolves ``ctx`` and ``surrogate`` from the object store)."""
    from robench.runner import run_cell

    t0 = time.perf_counter()
    outputs = run_cell(cell, ctx, surrogate, cfg, quiet=True)
    return outputs, time.perf_counter() - t0


class RayExecutor:
    """Cells as Ray tasks, each with the run's torch thread count in CPUs (and a GPU on CUDA).

    Connects to ``address`` (an existing cluster, e.g. ``ray://head:10001`` or
    ``auto``) or starts a local Ray instance, which :meth:`run` shuts down when
    it is done. A Ray already initialised in this process (a notebook, a test)
    is used as it is and left running.
    """

    def __init__(self, address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("executor ray needs Ray: pip install 'robench[ray]'") from None
        self.ray = ray
        self.owned = not ray.is_initialized()
        if self.owned:
            kwargs: Dict[str, Any] = {"address": address} if address else {"num_cpus": num_cpus}
            try:
                ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
            except ConnectionError as exc:
                raise UsageError(f"--ray-address {address}: cannot connect ({exc})") from None

    def run(self, jobs, contexts, surrogate, cfg, quiet: bool) -> Iterator[Tuple[list, float]]:
        from robench.progress import progress_bar

        ray = self.ray
        bar = progress_bar(total=len(jobs), desc="cells (ray)", unit="cell", disable=quiet)
        pending: List[Any] = []
        try:
            gpus = 1 if str(cfg.device).startswith("cuda") or _on_cuda(contexts) else 0
            # A task sets torch to cfg.threads threads (see runner.torch_threads): reserve as many CPUs.
            cpus = max(1, min(int(cfg.threads or 1), int(ray.cluster_resources().get("CPU", 1))))
            task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_ray_cell)
            refs = {path: ray.put(ctx) for path, ctx in contexts.items() if any(p == path for p, _ in jobs)}
            surrogate_ref = ray.put(surrogate)
            pending = [task.remote(cell, refs[path], surrogate_ref, cfg) for path, cell in jobs]
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                bar.update(1)
                yield self._get(ready[0])
        finally:
            for ref in pending:  # Ctrl-C or an error: stop what is still queued or running
                ray.cancel(ref, force=True)
            bar.close()
            if self.owned:
                ray.shutdown()

    def _get(self, ref) -> Tuple[list, float]:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RobenchError):  # a user error in a task reads like one in this process
                raise cause from None
            raise


def _on_cuda(contexts) -> bool:
    return any(getattr(c.model.device, "type", "cpu") == "cuda" for c in contexts.values())


def make_executor(cfg) -> Any:
    """The executor a configuration names (``local`` or ``ray``)."""
    if cfg.executor == "local":
        return LocalExecutor()
    if cfg.executor == "ray":
        return RayExecutor(cfg.ray_address)
    raise UsageError(f"unknown executor '{cfg.executor}' (known: local, ray)")
