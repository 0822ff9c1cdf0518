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
        """The run's well-formed events (a damaged one is left out, never a crash)."""
        return [e for e in read_events(self.path) if well_formed(e)]


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def well_formed(event: Any) -> bool:
    """An event the readers can show: integer neuron and iteration, a numeric score (or none),
    metrics as a mapping of numbers."""
    if not isinstance(event, dict):
        return False
    if not (isinstance(event.get("neuron"), int) and isinstance(event.get("iteration"), int)):
        return False
    if event.get("score") is not None and not is_number(event["score"]):
        return False
    metrics = event.get("metrics", {})
    return isinstance(metrics, dict) and all(v is None or is_number(v) for v in metrics.values())


def _n_iters(record: dict[str, Any]) -> int:
    value = record.get("config", {}).get("n_iters", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _best_or_none(best: Any) -> dict[str, Any] | None:
    """A summary's best entry if it is readable (a concept and a numeric score)."""
    if (
        isinstance(best, dict)
        and isinstance(best.get("concept"), str)
        and is_number(best.get("score"))
    ):
        metrics = best.get("metrics")
        return {**best, "metrics": metrics if isinstance(metrics, dict) else {}}
    return None


def _neurons_from_events(events: list[dict[str, Any]]) -> dict[int, NeuronView]:
    views: dict[int, NeuronView] = {}
    for event in (e for e in events if well_formed(e)):
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
    damaged = [
        k
        for k, kind in (("config", dict), ("neurons", list))
        if not isinstance(record.get(k, kind()), kind)
    ]
    for key in damaged:  # shown as the run's error; the rest of the record still reads
        record = {**record, key: {} if key == "config" else []}
    view = RunView(
        str(record.get("run_id") or path.name),
        path,
        record,
        effective_status(path, record),
        record.get("error"),
    )
    if view.error is not None and not isinstance(view.error, str):
        view.error = str(view.error)
    if damaged:
        found = f"run.json has a damaged {' and '.join(damaged)}"
        view.error = f"{found}; {view.error}" if view.error else found
    if view.status == "stale" and not view.error:
        view.error = "its process was killed (stale): resume it with nacosae explain --resume"
    try:
        summary = json.loads((path / SUMMARY_FILE).read_text())
        for key, found in summary.get("neurons", {}).items():
            if not isinstance(found, dict):
                raise ValueError(f"neuron {key} is not an object")
            history = found.get("history", [])
            curve = found.get("best_so_far", [])
            view.neurons[int(key)] = NeuronView(
                int(key),
                _best_or_none(found.get("best")),
                [h for h in history if isinstance(h, dict) and is_number(h.get("score"))]
                if isinstance(history, list)
                else [],
                [v for v in curve if is_number(v)] if isinstance(curve, list) else [],
                bool(curve) and _n_iters(record) + 1,
                found.get("note"),
                found.get("explanations") or [],
            )
    except FileNotFoundError:
        pass
    except (OSError, ValueError, AttributeError, TypeError) as exc:
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
