"""Reaching a Ray cluster: `local` starts one in this process, `auto` joins the running one,
anything else is an address (`HOST:PORT` or `ray://HOST:PORT`)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from nacosae.errors import NacosaeError

NAMESPACE = "nacosae"  # every actor nacosae starts lives here
SERVE_PREFIX = "serve-"  # named actors of `nacosae serve`, kept between commands
# the environment a worker needs to find the same models and caches as the driver
SHARED_ENVIRONMENT = (
    "NACOSAE_HOME",
    "SAVE_DIR",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "NACOSAE_FAILPOINTS",
)


def check_ray_options(ray: str | None, ray_workers: int | None) -> None:
    """`--ray-workers` counts the workers of a `--ray` cluster (one rule for every command)."""
    if ray_workers is not None and ray is None:
        raise NacosaeError(
            "--ray-workers needs --ray: it counts the workers started with --ray (local, auto "
            "or a cluster address)"
        )
    if ray_workers is not None and ray_workers < 1:
        raise NacosaeError("--ray-workers must be at least 1")


def import_ray() -> Any:
    """Ray, or one clear error naming the extra that installs it.

    Workers run this interpreter and its installed packages, not `uv run`: under `uv run` Ray
    would otherwise ship the working directory (`.venv` included) to every worker and import
    everything from that copy, without compiled bytecode (a worker's start went from about 10 s
    to 30 s). Ray reads the switch when it is imported, so one imported earlier (by a notebook,
    a test) is switched here too, unless the user set RAY_ENABLE_UV_RUN_RUNTIME_ENV=1."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    try:
        import ray
    except ImportError:
        raise NacosaeError(
            "--ray needs Ray, an optional extra: install it with `uv sync --extra ray` (or "
            "`pip install 'nacosae[ray]'`)"
        ) from None
    if os.environ["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] == "0":
        with contextlib.suppress(ImportError, AttributeError):  # a private switch of Ray's
            from ray._private import ray_constants

            ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV = False
    return ray


@dataclass
class Cluster:
    ray: Any
    address: str
    started_here: bool  # `local`: the cluster ends when this process disconnects
    connected_here: bool = True  # False: Ray was already connected (a notebook, a test)

    def gpus(self) -> int:
        return int(self.ray.cluster_resources().get("GPU", 0))

    def cpus(self) -> int:
        return int(self.ray.cluster_resources().get("CPU", 1))

    def close(self) -> None:
        """Disconnect (a cluster started here stops with it; a joined one keeps running)."""
        if self.connected_here:
            self.ray.shutdown()


def connect(address: str) -> Cluster:
    if address not in ("local", "auto"):
        _check_listening(address)
    ray = import_ray()
    if ray.is_initialized():
        return Cluster(ray, address, started_here=False, connected_here=False)
    quiet = {"log_to_driver": False, "logging_level": "ERROR", "namespace": NAMESPACE}
    try:
        with _own_sigterm_handler():
            if address == "local":
                ray.init(include_dashboard=False, **quiet)
            else:
                ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NacosaeError(
            f"cannot reach a Ray cluster at {address!r} ({first}): start one with `ray start "
            "--head`, or use --ray local to start one for this command"
        ) from None
    return Cluster(ray, address, started_here=address == "local")


@contextmanager
def _own_sigterm_handler() -> Iterator[None]:
    """Put the command's SIGTERM handler back after `ray.init`, which replaces it with one that
    ends the driver at once (skipping the cleanup that stops a local cluster: its agents were
    left running). SIGTERM then stops a `--ray` command as Ctrl-C does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if ours is not None:
            signal.signal(signal.SIGTERM, ours)


def _check_listening(address: str) -> None:
    """Fail at once where nothing listens (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except ValueError:
        problem = "not HOST:PORT"
    except OSError as exc:
        problem = f"nothing answers there: {exc.strerror or exc}"
    raise NacosaeError(
        f"--ray {address}: {problem}; give the head node's address (ray start --head prints "
        "it), auto for the cluster on this machine, or local to start one"
    )


def worker_environment() -> dict[str, str]:
    """The driver's model and cache locations, for the workers' runtime environment."""
    return {k: os.environ[k] for k in SHARED_ENVIRONMENT if k in os.environ}
