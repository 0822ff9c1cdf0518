"""`nacosae serve`: long-lived worker actors that keep a run's models loaded.

The workers are named, detached actors (`serve-0`, `serve-1`, ... in namespace `nacosae`), so
they outlive the command that started them; `explain --ray auto` finds them and sends its work
there, and models they hold are not loaded again. Idle for `idle_release_s`, a worker releases
its models (and the GPU memory) until it is used again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from nacosae import progress
from nacosae.distributed.cluster import SERVE_PREFIX, Cluster
from nacosae.distributed.pool import default_worker_count, served_workers, start_worker
from nacosae.errors import NacosaeError

if TYPE_CHECKING:
    from nacosae.models.sides import Job

DEFAULT_IDLE_RELEASE_S = 600.0


def start_service(
    cluster: Cluster, job: Job, workers: int | None, idle_release_s: float | None
) -> list[dict[str, Any]]:
    """Start the workers and build `job`'s side on each (worker 0, the lead, runs the job's
    lead methods: explain's loads its LLM there); returns their descriptions. A cluster that
    already has `nacosae serve` workers is an error."""
    ray = cluster.ray
    if served_workers(ray):
        raise NacosaeError(
            "this Ray cluster already has `nacosae serve` workers: see `nacosae serve --status`, "
            "or end them with `nacosae serve --stop`"
        )
    count = workers or default_worker_count(cluster)
    actors = [
        start_worker(cluster, f"{SERVE_PREFIX}{k}", detached=True, idle_release_s=idle_release_s)
        for k in range(count)
    ]
    try:
        ray.get([a.prepare.remote(job, k == 0) for k, a in enumerate(actors)])
    except Exception:
        for actor in actors:
            ray.kill(actor)
        raise
    return service_status(cluster)


def service_status(cluster: Cluster) -> list[dict[str, Any]]:
    """One description per `nacosae serve` worker: name, host, pid, models, memory, idle time."""
    ray = cluster.ray
    found = served_workers(ray)
    described = ray.get([actor.describe.remote() for _, actor in found])
    return [{"name": name, **d} for (name, _), d in zip(found, described, strict=True)]


def stop_service(cluster: Cluster) -> list[str]:
    """End every `nacosae serve` worker; their names."""
    ray = cluster.ray
    found = served_workers(ray)
    for _, actor in found:
        ray.kill(actor)
    return [name for name, _ in found]


def serve_in_foreground(cluster: Cluster, poll_s: float = 1.0) -> None:
    """Keep a cluster started by this command alive until Ctrl-C, or until its workers are
    gone (`nacosae serve --stop` from another shell), then end them and the cluster."""
    progress.info(
        "serving; `--ray auto` in other commands uses these workers. Ctrl-C (or `nacosae serve "
        "--stop`) stops."
    )
    try:
        while served_workers(cluster.ray):
            time.sleep(poll_s)
        progress.info("the workers were stopped (`nacosae serve --stop`): ending the cluster")
    finally:
        stop_service(cluster)
