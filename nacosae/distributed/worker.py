"""The worker actor: one per GPU (or CPU slot), holding one ModelCache for every run it serves.

Each run sends its job once (`prepare`, any `Job` of models/sides.py); the worker builds the
job's model side through its cache, so models another run (or `nacosae serve`) already loaded
are reused, not loaded again, and later `call`s name the side by the job's key. Every method is
plain Python, so the class also runs (and is tested) without Ray. Idle for `idle_release_s`, the
worker forgets its models (GPU memory is released) and loads them again when asked.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from nacosae.models.devices import empty_device_cache

if TYPE_CHECKING:
    from collections.abc import Iterator

    from nacosae.models.sides import Facts, Job


class ModelWorker:
    def __init__(self, idle_release_s: float | None = None) -> None:
        from nacosae import progress
        from nacosae.models.cache import ModelCache

        progress.configure(quiet=True)
        progress.calm_libraries()
        self.cache = ModelCache()
        self.sides: dict[str, Any] = {}  # job key -> the job's model side
        self.leading: set[str] = set()  # job keys whose lead methods ran here
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        self.idle_release_s = idle_release_s
        self.releases = 0
        self._closing = threading.Event()
        self._watcher = None
        if idle_release_s:
            self._watcher = threading.Thread(target=self._release_when_idle, daemon=True)
            self._watcher.start()

    def close(self) -> None:
        """Stop watching for idleness (an actor's process simply ends)."""
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join()

    @contextmanager
    def _busy(self) -> Iterator[None]:
        with self.lock:
            try:
                yield
            finally:
                self.last_used = time.monotonic()

    def _release_when_idle(self) -> None:
        assert self.idle_release_s
        while not self._closing.wait(min(1.0, self.idle_release_s / 4)):
            idle = time.monotonic() - self.last_used
            if idle < self.idle_release_s or not self.cache.loaded():
                continue
            if self.lock.acquire(blocking=False):
                try:
                    self.cache.clear()
                    self.releases += 1
                    empty_device_cache()
                finally:
                    self.lock.release()

    def prepare(self, job: Job, lead: bool, threads: int | None = None) -> Facts:
        """Build (through the cache) the side of `job`, the lead's methods too when `lead`;
        its facts for the driver. Later calls name the side by `job.key()` (the job, an SAE
        included, is sent once). `threads`: the driver's CPU threads, so that CPU results equal
        a run without Ray bit for bit."""
        import torch

        if threads:
            torch.set_num_threads(threads)
        with self._busy():
            key = job.key()
            if key not in self.sides:
                self.sides[key] = job.build(self.cache)
            if lead and key not in self.leading:
                for method in job.lead_methods:
                    getattr(self.sides[key], method)()
                self.leading.add(key)
            return self.sides[key].facts()

    def call(self, key: str, method: str, *args: Any) -> tuple[Any, list[dict[str, Any]]]:
        """`method(*args)` on the side of the job with `key`, and the notes the side has made
        since (its back-offs), which the driver records."""
        with self._busy():
            side = self.sides[key]
            result = getattr(side, method)(*args)
            drain = getattr(side, "drain_notes", None)
            return result, (drain() if drain is not None else [])

    def loads(self) -> int:
        return self.cache.stats.loads

    def pid(self) -> int:
        return os.getpid()

    def describe(self) -> dict[str, Any]:
        """For `nacosae serve --status`: models held, memory, idle seconds."""
        import torch

        gpu = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
        return {
            "pid": os.getpid(),
            "host": os.uname().nodename,
            "models": [spec.label() for spec, _ in self.cache.loaded()],
            "loads": self.cache.stats.loads,
            "releases": self.releases,
            "idle_s": round(time.monotonic() - self.last_used, 1),
            "rss_gib": round(_resident_bytes() / 2**30, 2),
            "gpu_gib": round(gpu / 2**30, 2),
        }


def _resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; the peak elsewhere)."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])  # noqa: SIM115
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
