"""Read-only views of run directories, tolerant of runs that are running, failed, interrupted
or damaged: a broken run becomes a view with an error, never an exception for the others."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacosae.store.runs import (
    EVENTS_FILE,
    RUN_FILE,
    SUMMARY_FILE,
    effective_status,
    is_run_directory,
    read_events,
)


@dataclass
class NeuronView:
    neuron: int
    best: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    curve: list[float] = field(default_factory=list)
    iterations: int = 0
    note: str | None = None  # why there is no search (an SAE latent that never fires)
    explanations: list[dict[str, Any]] = field(default_factory=list)  # --explanations K


@dataclass
class RunView:
    run_id: str
    path: Path
    record: dict[str, Any]
    status: str
    error: str | None = None
    neurons: dict[int, NeuronView] = field(default_factory=dict)

    @property
    def config(self) -> dict[str, Any]:
        return self.record.get("config", {})

    @property
    def presets(self) -> list[str]:
        found = self.config.get("preset") or []
        return [found] if isinstance(found, str) else list(found)

    @property
    def is_smoke(self) -> bool:
        return "smoke" in self.presets

    @property
    def warnings(self) -> list[str]:
        return list(self.record.get("warnings") or [])

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.path)


def _neurons_from_events(events: list[dict[str, Any]]) -> dict[int, NeuronView]:
    views: dict[int, NeuronView] = {}
    for event in events:
        view = views.setdefault(event["neuron"], NeuronView(event["neuron"], None))
        view.iterations = max(view.iterations, event["iteration"])
        if event.get("score") is None:
            continue
        score = event["score"]
        view.curve.append(max(score, view.curve[-1]) if view.curve else score)
        if view.best is None or score > view.best["score"]:
            view.best = {k: event.get(k) for k in ("concept", "score", "iteration", "source")}
            view.best["metrics"] = event.get("metrics", {})
    return views


def load_run(path: Path) -> RunView:
    """A run's view from run.json and summary.json (events.jsonl only for unfinished neurons)."""
    path = Path(path)
    try:
        record = json.loads((path / RUN_FILE).read_text())
        if not isinstance(record, dict):
            raise ValueError("run.json is not an object")
    except (OSError, ValueError) as exc:
        return RunView(path.name, path, {}, "corrupt", f"unreadable run.json: {exc}")
    view = RunView(
        record.get("run_id", path.name),
        path,
        record,
        effective_status(path, record),
        record.get("error"),
    )
    if view.status == "stale" and not view.error:
        view.error = "its process was killed (stale): resume it with nacosae explain --resume"
    try:
        summary = json.loads((path / SUMMARY_FILE).read_text())
        for key, found in summary.get("neurons", {}).items():
            view.neurons[int(key)] = NeuronView(
                int(key),
                found.get("best"),
                found.get("history", []),
                found.get("best_so_far", []),
                max(len(found.get("best_so_far", [])), 0)
                and record.get("config", {}).get("n_iters", 0) + 1,
                found.get("note"),
                found.get("explanations") or [],
            )
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        view.error = view.error or f"unreadable summary.json: {exc}"
    wanted = record.get("neurons")
    if (path / EVENTS_FILE).is_file() and (not view.neurons or wanted != list(view.neurons)):
        for neuron, found in _neurons_from_events(read_events(path)).items():
            view.neurons.setdefault(neuron, found)
    return view


def list_runs(runs_dir: Path, only: list[str] | None = None) -> list[RunView]:
    """Every run under `runs_dir` (newest last), or just the `only` run ids."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    paths = sorted(p for p in runs_dir.iterdir() if is_run_directory(p))
    if only:
        paths = [runs_dir / run_id for run_id in only]
    return [load_run(p) for p in paths if p.is_dir()]


METRIC_COLUMNS = ("auc", "mad", "mean", "u1", "p", "auprc", "correlation")
ROW_COLUMNS = (
    "neuron",
    "concept",
    "run_id",
    "model",
    "layer",
    "status",
    "preset",
    "metric",
    "score",
    *METRIC_COLUMNS,
    "iterations",
    "warnings",
    "error",
    "note",
    "explanations",
)  # the fixed columns of `report --format csv/json`, in this order (README lists them)


def rows(runs: list[RunView]) -> list[dict[str, Any]]:
    """One row per (run, neuron) with exactly ROW_COLUMNS; `neuron` and `concept` first, the
    columns `nacosae evaluate` reads. A run with no neuron yet is one row without them."""
    table = []
    for run in runs:
        base = {
            "run_id": run.run_id,
            "model": run.config.get("model"),
            "layer": run.config.get("layer"),
            "status": run.status,
            "preset": "+".join(run.presets) or None,
            "metric": run.config.get("metric", "auc") if run.config else None,
            "warnings": "; ".join(run.warnings) or None,
            "error": run.error,
        }
        for neuron, view in sorted(run.neurons.items()) or [(None, None)]:
            best = (view.best if view else None) or {}
            metrics = best.get("metrics", {})
            row = {
                **base,
                "neuron": neuron,
                "concept": best.get("concept"),
                "score": best.get("score"),
                **{m: metrics.get(m) for m in METRIC_COLUMNS},
                "iterations": view.iterations if view else None,
                "note": view.note if view else None,
                "explanations": "; ".join(e["concept"] for e in view.explanations)
                if view and view.explanations
                else None,
            }
            table.append({column: row.get(column) for column in ROW_COLUMNS})
    return table
