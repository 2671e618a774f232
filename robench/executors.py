"""Executors: where the jobs of a run are computed (this process, or Ray tasks).

An executor is given the task function (:func:`robench.evaluate.run_job`) and
the jobs; it never imports the runner. Every job is a pure function of
(checkpoint, data indices, attack, eps, threat, detectors, seed): its randomness
comes from its own generator seeded from the cell key, never from the global
RNG. So where it runs does not change its result; the driver writes what comes
back, and the final tables are sorted, so the files are the same whatever the
order of completion.

The Ray executor ships the driver's prepared models (weights, test points and
fitted detectors) to the tasks through the object store, so a task neither
reads the checkpoint path nor refits a detector: workers on other machines
need robench installed, not the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

from robench.errors import RobenchError, UsageError


@dataclass(frozen=True)
class Task:
    """One job of a run and the model it belongs to."""

    model_path: str
    job: Any  # robench.plan.Cell or Chain


class LocalExecutor:
    """Jobs one after another in this process, sharing one craft cache."""

    def run(self, fn: Callable, tasks: List[Task], contexts: Dict[str, Any], surrogate: Any, cfg: Any,
            quiet: bool) -> Iterator[Any]:
        from robench.craft import CraftCache
        from robench.progress import progress_bar

        cache = CraftCache()
        bar = progress_bar(total=len(tasks), desc="cells", unit="cell", disable=quiet)
        try:
            for task in tasks:
                yield fn(task.job, contexts[task.model_path], surrogate, cfg, quiet, cache)
                bar.update(1)
        finally:
            bar.close()


def _ray_task(fn: Callable, job: Any, ctx: Any, surrogate: Any, cfg: Any) -> Any:
    """Body of one Ray task (Ray resolves ``ctx`` and ``surrogate`` from the object store)."""
    return fn(job, ctx, surrogate, cfg, True)


class RayExecutor:
    """Jobs as Ray tasks, each with the run's torch thread count in CPUs (and a GPU on CUDA).

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

    def run(self, fn: Callable, tasks: List[Task], contexts: Dict[str, Any], surrogate: Any, cfg: Any,
            quiet: bool) -> Iterator[Any]:
        from robench.progress import progress_bar

        ray = self.ray
        bar = progress_bar(total=len(tasks), desc="cells (ray)", unit="cell", disable=quiet)
        pending: List[Any] = []
        try:
            gpus = 1 if str(cfg.device).startswith("cuda") or _on_cuda(contexts) else 0
            # A task sets torch to cfg.threads threads (see devices.torch_threads): reserve as many CPUs.
            cpus = max(1, min(int(cfg.threads or 1), int(ray.cluster_resources().get("CPU", 1))))
            remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_ray_task)
            paths = {t.model_path for t in tasks}
            refs = {path: ray.put(ctx) for path, ctx in contexts.items() if path in paths}
            surrogate_ref = ray.put(surrogate)
            pending = [remote.remote(fn, t.job, refs[t.model_path], surrogate_ref, cfg) for t in tasks]
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

    def _get(self, ref) -> Any:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RobenchError):  # a user error in a task reads like one in this process
                raise cause from None
            raise


def _on_cuda(contexts: Dict[str, Any]) -> bool:
    return any(getattr(c.model.device, "type", "cpu") == "cuda" for c in contexts.values())


def make_executor(cfg: Any) -> Any:
    """The executor a configuration names (``local`` or ``ray``)."""
    if cfg.executor == "local":
        return LocalExecutor()
    if cfg.executor == "ray":
        return RayExecutor(cfg.ray_address)
    raise UsageError(f"unknown executor '{cfg.executor}' (known: local, ray)")
