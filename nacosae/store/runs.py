"""The run directory: everything a run decided and produced, written so a kill loses nothing.

`SAVE_DIR/<run_id>/`:
- `run.json`: resolved configuration, versions, seeds, model ids, control store id, status
  (running, done, failed, interrupted), the process running it, timings per attempt and in
  total, model-cache stats and warnings; replaced atomically.
- `events.jsonl`: one JSON object per scored concept; each phase's events are appended in one
  write and fsynced, so a kill leaves at most one cut line, which readers skip.
- `summary.json`: per neuron the best concept and score, the final history, the best-so-far
  curve; replaced atomically.
- `images/<neuron>/<iteration>_<slug>/<k>.png` when images are saved.
- `run.lock`: held (flock) by the process working on the run, so a second process cannot
  resume it at the same time; the kernel releases it when that process dies, however it dies.
- `heartbeat`: touched every 30 s while a process works on the run, so readers can tell a run
  that is running from one whose process was killed ("stale").
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import IO, Any

from nacosae.errors import NacosaeError
from nacosae.store.atomic import atomic_write_json, atomic_write_text

RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
LOCK_FILE = "run.lock"
HEARTBEAT_FILE = "heartbeat"
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 300.0  # no heartbeat for this long: the process is gone


class RunBusy(NacosaeError):
    """Another live process holds the run directory."""


class RunLock:
    """An exclusive flock on `run.lock`, with the holder's pid written inside."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK_FILE
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): runs are not protected against each other
            return
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunBusy(
                f"run {self.path.parent.name} is in use by process {holder}: wait for it to "
                "finish or stop it, then resume"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()} on {socket.gethostname()}")
        handle.flush()
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock
            self._handle = None


class Heartbeat:
    """Touches `heartbeat` every HEARTBEAT_SECONDS from a daemon thread until stopped."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / HEARTBEAT_FILE
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="nacosae-heartbeat")

    def start(self) -> None:
        self.path.touch()
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.path.touch()
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def effective_status(directory: Path, record: dict[str, Any]) -> str:
    """The recorded status, except that a "running" run whose process is gone reads "stale"
    (killed with SIGKILL, or its machine went down)."""
    status = str(record.get("status", "?"))
    if status != "running":
        return status
    process = record.get("process") or {}
    if process.get("host") == socket.gethostname() and process.get("pid"):
        return status if process_alive(int(process["pid"])) else "stale"
    beat = Path(directory) / HEARTBEAT_FILE
    try:
        age = time.time() - beat.stat().st_mtime
    except OSError:
        return "stale" if process else status
    return "stale" if age > STALE_AFTER_SECONDS else status


def slugify(concept: str, limit: int = 40) -> str:
    """A file-name-safe form of a concept, with a short hash so distinct concepts never collide
    ('../../x' -> 'x-<hash>'; 'a/b' -> 'a-b-<hash>')."""
    base = re.sub(r"[^a-z0-9]+", "-", concept.lower()).strip("-")[:limit].strip("-") or "concept"
    return f"{base}-{hashlib.sha256(concept.encode()).hexdigest()[:6]}"


def make_run_id(model: str, layer: str, neurons: list[str], now: float | None = None) -> str:
    """'<time>_<model>_<layer>_n<selection>', e.g. 20261127-101500_resnet18_avgpool_n12."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    which = re.sub(r"[^A-Za-z0-9]+", "-", "_".join(neurons)).strip("-")[:40] or "none"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{model}_{layer}")
    return f"{stamp}_{safe}_n{which}"


class RunWriter:
    """Owns one run directory while a process works on it: holds its lock, beats its heart,
    and writes its files. `close()` when done."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.images_dir = self.directory / "images"
        self.record: dict[str, Any] = {}
        self.events_written = 0  # appended by this process (to notice a deleted events file)
        self._lock = RunLock(self.directory)
        self._heartbeat: Heartbeat | None = None

    def _mark_process(self) -> None:
        """Beat the heart and record this process (the lock is held)."""
        self._heartbeat = Heartbeat(self.directory)
        self._heartbeat.start()
        self.record["process"] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        self._lock.release()

    @classmethod
    def create(cls, save_dir: Path, run_id: str, record: dict[str, Any]) -> RunWriter:
        directory = Path(save_dir) / run_id
        suffix = 1
        while directory.exists():  # two runs started in the same second
            suffix += 1
            directory = Path(save_dir) / f"{run_id}-{suffix}"
        directory.mkdir(parents=True)
        writer = cls(directory)
        writer.record = {"run_id": directory.name, "status": "running", **record}
        writer._lock.acquire()
        writer._mark_process()
        writer.save_record()
        (directory / EVENTS_FILE).touch()
        return writer

    def save_record(self) -> None:
        atomic_write_json(self.directory / RUN_FILE, self.record)

    def update(self, **fields: Any) -> None:
        self.record.update(fields)
        self.save_record()

    @classmethod
    def open(cls, directory: Path) -> RunWriter:
        """An existing run, to resume it (refused while another live process holds it)."""
        writer = cls(directory)
        writer._lock.acquire()
        try:
            writer.record = json.loads((writer.directory / RUN_FILE).read_text())
        except (OSError, ValueError) as exc:
            writer._lock.release()
            raise NacosaeError(f"{directory / RUN_FILE} is unreadable ({exc})") from exc
        writer._mark_process()
        return writer

    def append_events(self, events: list[dict[str, Any]]) -> None:
        """Append lines and fsync: a kill leaves at most one cut line, which readers skip."""
        if not events:
            return
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events)
        with open(self.directory / EVENTS_FILE, "a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        self.events_written += len(events)

    def keep_events(self, count: int) -> None:
        """Cut events.jsonl back to its first `count` complete events (before a resume)."""
        kept = read_events(self.directory)[:count]
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in kept)
        atomic_write_text(self.directory / EVENTS_FILE, text)

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_json(self.directory / SUMMARY_FILE, summary)

    def image_folder(self, neuron: int, iteration: int, concept: str) -> Path:
        folder = self.images_dir / str(neuron) / f"{iteration:02d}_{slugify(concept)}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder


def is_run_directory(path: Path) -> bool:
    """A run directory has its record or its events (a damaged run still has one of them); a
    folder with neither, such as `evaluations/` beside the runs or an import's dot-named staging
    folder, is not a run."""
    path = Path(path)
    return (
        path.is_dir()
        and not path.name.startswith(".")
        and ((path / RUN_FILE).exists() or (path / EVENTS_FILE).exists())
    )


def read_events(directory: Path) -> list[dict[str, Any]]:
    """Every complete event line (a line cut short by a kill is ignored)."""
    path = Path(directory) / EVENTS_FILE
    events = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return events
