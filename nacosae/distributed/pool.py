"""The driver's side of a Ray run: an `Executor` (models/sides.py) over worker actors.

Every worker builds the command's job (any `Job`: explain's, an evaluation's, a control store
build's) into a model side through its own ModelCache; the pool then calls the side's methods by
name. `completed` hands each task to whichever worker is free (explain and evaluate send their
text-to-image calls and measurements this way, `controls --ray` its shards), and `call` runs a
method on worker 0, the lead (explain's LLM batches). What travels is plain data (PNG bytes,
arrays); the driver alone writes the concept cache, the run directory or the store, so no shared
filesystem is needed. A worker that dies is replaced and its task retried. The pool knows no
command: what a method does is the side's business.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nacosae import progress
from nacosae.distributed.cluster import NAMESPACE, SERVE_PREFIX, Cluster, worker_environment
from nacosae.errors import NacosaeError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from nacosae.models.sides import Facts, Job

RETRIES = 3  # replacements per task before the run fails


def remote_worker_class(ray: Any) -> Any:
    from nacosae.distributed.worker import ModelWorker

    return ray.remote(max_restarts=0)(ModelWorker)


def worker_resources(cluster: Cluster) -> dict[str, float]:
    """One GPU per worker where the cluster has GPUs, else one CPU slot."""
    return {"num_gpus": 1, "num_cpus": 1} if cluster.gpus() else {"num_cpus": 1}


def default_worker_count(cluster: Cluster) -> int:
    return cluster.gpus() or max(1, cluster.cpus())


def served_workers(ray: Any) -> list[tuple[str, Any]]:
    """The named actors of a running `nacosae serve`, by name."""
    names = sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == NAMESPACE and a["name"].startswith(SERVE_PREFIX)
    )
    return [(name, ray.get_actor(name, namespace=NAMESPACE)) for name in names]


@dataclass
class Slot:
    """One worker place: its actor, and its model loads when last asked."""

    actor: Any
    name: str
    owned: bool
    loads_at_start: int = 0
    loads_seen: int = 0


@dataclass
class WorkerPool:
    """An `Executor` whose sides live on Ray worker actors, one per slot."""

    cluster: Cluster
    job: Job
    slots: list[Slot]
    key: str = ""
    replaced_loads: int = 0
    closed_loads: int | None = None
    tasks_sent: int = 0
    schedule_seconds: float = 0.0
    retries: int = 0
    served: bool = False  # the workers are `nacosae serve`'s
    notes: list[dict[str, Any]] = field(default_factory=list)  # what the sides reported
    threads: int = field(default_factory=lambda: _driver_threads())  # defined below

    @classmethod
    def start(cls, cluster: Cluster, job: Job, workers: int | None = None) -> WorkerPool:
        """Use `nacosae serve`'s warm workers when the cluster has them (and `workers` is not
        given), else start `workers` (default: one per GPU, or per CPU slot) for this run."""
        ray = cluster.ray
        served = served_workers(ray) if workers is None else []
        if served:
            slots = [Slot(actor, name, owned=False) for name, actor in served]
            progress.info(f"ray: {len(slots)} warm workers of `nacosae serve`")
        else:
            count = workers or default_worker_count(cluster)
            slots = [_new_slot(cluster, k) for k in range(count)]
            progress.info(f"ray: {count} workers started for this run")
        pool = cls(cluster, job, slots, key=job.key(), served=bool(served))
        try:
            for slot in slots:
                slot.loads_at_start = slot.loads_seen = ray.get(slot.actor.loads.remote())
        except BaseException:  # Ctrl-C while the workers start: none of them is left behind
            for slot in slots:
                if slot.owned:
                    ray.kill(slot.actor)
            raise
        return pool

    @classmethod
    @contextmanager
    def running(
        cls, cluster: Cluster, job: Job, workers: int | None = None
    ) -> Iterator[WorkerPool]:
        """`start`ed for a command's block; its own workers end (and the cluster is left) when
        the block ends, also when they fail to start."""
        try:
            pool = cls.start(cluster, job, workers)
        except BaseException:
            cluster.close()
            raise
        try:
            yield pool
        finally:
            pool.close()

    # ------------------------------------------------------------ the Executor protocol

    @property
    def width(self) -> int:
        return len(self.slots)

    def facts(self) -> Facts:
        """Every worker builds the job's side (the lead also runs the job's lead methods);
        their facts must agree."""
        pending = [
            s.actor.prepare.remote(self.job, k == 0, self.threads) for k, s in enumerate(self.slots)
        ]
        found = self._gather(pending, "load the models")
        first = found[0]
        for other in found[1:]:
            if other.keys != first.keys:
                raise NacosaeError(
                    "the Ray workers disagree on the run's settings (one computes on "
                    f"{first.device}, another on {other.device}): give --device explicitly"
                )
        return first

    def completed(self, method: str, tasks: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        """Run `method(key, *task)` for every task on whichever worker is free; (task index,
        result) as each finishes. A task whose worker dies goes back to the queue (the next
        free worker takes it) while a replacement starts; the replacement joins when its
        models are loaded. A worker's own error (bad input, out of memory) ends the run."""
        ray = self.cluster.ray
        queue = deque((index, 0) for index in range(len(tasks)))
        running: dict[Any, tuple[int, int, int]] = {}  # ref -> slot, task (-1: a start), tries
        free = list(range(len(self.slots)))
        while queue or running:
            started = time.perf_counter()
            while queue and free:
                index, tries = queue.popleft()
                k = free.pop(0)
                actor = self.slots[k].actor
                ref = actor.call.remote(self.key, method, *tasks[index])
                running[ref] = (k, index, tries)
                self.tasks_sent += 1
            self.schedule_seconds += time.perf_counter() - started
            done, _ = ray.wait(list(running), num_returns=1)
            started = time.perf_counter()
            k, index, tries = running.pop(done[0])
            if index < 0:  # a replacement worker is ready
                self._gather(done, "load the models")
                free.append(k)
                self.schedule_seconds += time.perf_counter() - started
                continue
            try:
                result, notes = self._gather(done, f"run {method}")[0]
                self.notes.extend(notes)
            except ray.exceptions.RayActorError as exc:
                running[self._replace(k, tries, exc)] = (k, -1, tries)
                queue.appendleft((index, tries + 1))
                self.schedule_seconds += time.perf_counter() - started
                continue
            free.append(k)
            self.schedule_seconds += time.perf_counter() - started
            yield index, result

    def call(self, method: str, *args: Any) -> Any:
        """`method(*args)` on worker 0, the lead (a worker that dies is replaced first)."""
        ray = self.cluster.ray
        for tries in range(RETRIES + 1):
            try:
                ref = self.slots[0].actor.call.remote(self.key, method, *args)
                result, notes = self._gather([ref], f"run {method}")[0]
            except ray.exceptions.RayActorError as exc:
                self._gather([self._replace(0, tries, exc)], "load the models")
                continue
            self.notes.extend(notes)
            return result
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ bookkeeping

    def model_loads(self) -> int:
        """Models the workers loaded for this run (0 when `nacosae serve` had them warm)."""
        if self.closed_loads is not None:
            return self.closed_loads
        ray = self.cluster.ray
        for slot in self.slots:
            with contextlib.suppress(ray.exceptions.RayActorError):  # replaced at its next task
                slot.loads_seen = ray.get(slot.actor.loads.remote())
        return self.replaced_loads + sum(s.loads_seen - s.loads_at_start for s in self.slots)

    def stats(self) -> dict[str, Any]:
        """For run.json: workers, tasks sent, the driver's scheduling seconds, replacements."""
        return {
            "workers": len(self.slots),
            "served": self.served,
            "tasks": self.tasks_sent,
            "schedule_seconds": round(self.schedule_seconds, 4),
            "replaced": self.retries,
        }

    def close(self) -> None:
        """End the workers this run started (never `nacosae serve`'s) and disconnect."""
        if self.closed_loads is not None:
            return
        try:
            self.closed_loads = self.model_loads()
        except Exception:  # noqa: BLE001 - an interrupted driver still ends its workers
            self.closed_loads = self.replaced_loads
        ray = self.cluster.ray
        for slot in self.slots:
            if slot.owned:
                ray.kill(slot.actor)
        self.cluster.close()

    def _gather(self, refs: list[Any], what: str) -> list[Any]:
        ray = self.cluster.ray
        try:
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:  # the worker's own error, e.g. a bad model id
            cause = exc.cause if hasattr(exc, "cause") else exc
            if isinstance(cause, NacosaeError):
                raise NacosaeError(str(cause)) from None
            raise NacosaeError(f"a Ray worker could not {what}: {cause}") from None

    def _replace(self, k: int, tries: int, error: Exception) -> Any:
        """Start a new worker in place of dead worker `k`; returns the reference of its
        model loading (the caller waits for it)."""
        if tries >= RETRIES:
            raise NacosaeError(
                f"Ray worker {self.slots[k].name} died {tries + 1} times on the same work "
                f"({type(error).__name__}): see the Ray logs (/tmp/ray/session_latest/logs)"
            ) from None
        old = self.slots[k]
        self.replaced_loads += old.loads_seen - old.loads_at_start
        progress.warn(f"ray: worker {old.name} died; a new one takes over its work")
        self.retries += 1
        self.slots[k] = _new_slot(self.cluster, len(self.slots) + self.retries)
        return self.slots[k].actor.prepare.remote(self.job, k == 0, self.threads)


def _driver_threads() -> int:
    import torch

    return torch.get_num_threads()


def start_worker(
    cluster: Cluster, name: str, detached: bool = False, idle_release_s: float | None = None
) -> Any:
    """A worker actor `name` in nacosae's namespace, with the driver's model locations and one
    GPU (or CPU slot); a `detached` one outlives this process (`nacosae serve`'s)."""
    lifetime = {"lifetime": "detached"} if detached else {}
    return (
        remote_worker_class(cluster.ray)
        .options(
            name=name,
            namespace=NAMESPACE,
            runtime_env={"env_vars": worker_environment()},
            **worker_resources(cluster),
            **lifetime,
        )
        .remote(idle_release_s)
    )


def _new_slot(cluster: Cluster, k: int) -> Slot:
    name = f"run-{os.getpid()}-{k}"
    return Slot(start_worker(cluster, name), name, owned=True)
