"""What the dashboard shows, kept out of Streamlit scripts so it can be tested and reused:
a fast index of runs (run.json only), filters, and per-run details loaded on demand."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacosae.report.runs import RunView, load_run
from nacosae.store.runs import RUN_FILE, effective_status

RUNS_ENV = "NACOSAE_DASHBOARD_RUNS"


def default_runs_dir() -> Path:
    from nacosae.config import settings

    return Path(os.environ.get(RUNS_ENV) or settings().save_dir)


@dataclass(frozen=True)
class RunEntry:
    """One line of the run index: enough to filter and pick, nothing decoded."""

    run_id: str
    path: str
    model: str
    layer: str
    status: str
    neurons: tuple[int, ...]
    error: str | None


def index_runs(runs_dir: Path) -> list[RunEntry]:
    """Read each run.json once; damaged runs are listed with their error."""
    entries = []
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    for path in sorted((p for p in runs_dir.iterdir() if p.is_dir()), reverse=True):
        try:
            record = json.loads((path / RUN_FILE).read_text())
            config = record.get("config", {})
            entries.append(
                RunEntry(
                    path.name,
                    str(path),
                    str(config.get("model", "?")),
                    str(config.get("layer", "?")),
                    effective_status(path, record),
                    tuple(record.get("neurons") or ()),
                    record.get("error"),
                )
            )
        except (OSError, ValueError, AttributeError) as exc:
            entries.append(RunEntry(path.name, str(path), "?", "?", "corrupt", (), str(exc)))
    return entries


def run_stamp(path: Path) -> tuple:
    """What changes when a run changes: its record, events, summary and heartbeat files."""
    stamp = []
    for name in (RUN_FILE, "events.jsonl", "summary.json", "heartbeat"):
        try:
            info = (Path(path) / name).stat()
            stamp.append((name, info.st_mtime_ns, info.st_size))
        except OSError:
            stamp.append((name, None, None))
    return tuple(stamp)


def index_stamp(runs_dir: Path) -> tuple:
    """A cache key for the run index: every run folder with its record's and heartbeat's
    modification times (the folder's own time changes only when runs are added or removed)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return ()
    stamp = []
    for path in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        times = []
        for name in (RUN_FILE, "heartbeat"):
            try:
                times.append((path / name).stat().st_mtime_ns)
            except OSError:
                times.append(None)
        stamp.append((path.name, *times))
    return tuple(stamp)


def run_label(run_id: str) -> str:
    """A run id as a picker label that stays distinct when the sidebar cuts it short: what
    differs between runs (neurons, time) first. `20261128-055210_resnet18_avgpool_n0-5` ->
    `n0-5 · 11-28 05:52:10 · resnet18_avgpool`."""
    stamp, _, rest = run_id.partition("_")
    date, _, clock = stamp.partition("-")
    if len(date) != 8 or len(clock) != 6 or not rest:
        return run_id
    described, _, neurons = rest.rpartition("_")
    when = f"{date[4:6]}-{date[6:]} {clock[:2]}:{clock[2:4]}:{clock[4:]}"
    return f"{neurons} · {when} · {described}" if described else f"{rest} · {when}"


def filter_runs(
    entries: list[RunEntry], model: str | None, layer: str | None, status: str | None
) -> list[RunEntry]:
    return [
        e
        for e in entries
        if (not model or e.model == model)
        and (not layer or e.layer == layer)
        and (not status or e.status == status)
    ]


def open_run(path: str) -> RunView:
    return load_run(Path(path))


def neuron_events(run: RunView, neuron: int) -> list[dict[str, Any]]:
    return [e for e in run.events() if e.get("neuron") == neuron]
