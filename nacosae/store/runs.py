"""The run directory: everything a run decided and produced, written so a kill loses nothing.

`SAVE_DIR/<run_id>/`:
- `run.json`: resolved configuration, versions, seeds, model ids, control store id, status
  (running, done, failed, interrupted), timings and model-cache stats; replaced atomically.
- `events.jsonl`: one JSON object per scored concept, appended and flushed line by line.
- `summary.json`: per neuron the best concept and score, the final history, the best-so-far
  curve; replaced atomically.
- `images/<neuron>/<iteration>_<slug>/<k>.png` when images are saved.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from nacosae.store.atomic import atomic_write_json, atomic_write_text

RUN_FILE = "run.json"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"


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
    """Owns one run directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.images_dir = self.directory / "images"
        self.record: dict[str, Any] = {}

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
        """An existing run, to resume it."""
        writer = cls(directory)
        writer.record = json.loads((writer.directory / RUN_FILE).read_text())
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
