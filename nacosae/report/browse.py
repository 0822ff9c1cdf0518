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
