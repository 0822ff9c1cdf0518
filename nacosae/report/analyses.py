"""The original project's analyses over the units of a layer, from run directories alone.

- When the best concept was found: per unit the iteration of its best-scored concept, the
  initial classes as iteration 0 and the summary step as "summary" (the original's notebooks
  ask whether later iterations still find better concepts).
- Cumulative best: per unit the best score after each iteration (0 = the initial history),
  drawn for every unit with their median.
- Control-class names among the final concepts: the share whose best concept is exactly the
  name of a control class, as the original counts its "predefined" concepts (behind its "31%
  new concepts"); `evaluate --novelty` gives the MiniLM-similarity view of the same question
  (its CSV can be shown beside, `report --novelty`).
Units are grouped by model, layer and metric: scores under different metrics do not mix.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacosae.errors import NacosaeError
from nacosae.report.runs import RunView

SUMMARY_LABEL = "summary"


@dataclass
class UnitTrace:
    run_id: str
    neuron: int
    best_concept: str | None
    best_iteration: str  # "0", "1", ..., or "summary"
    curve: list[float]  # best score after iteration 0, 1, ...
    is_class_name: bool


@dataclass
class LayerAnalysis:
    model: str | None
    layer: str | None
    metric: str
    units: list[UnitTrace] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{self.model} {self.layer} ({self.metric}, {len(self.units)} units)"

    def best_iteration_counts(self) -> dict[str, int]:
        """Units per iteration of their best concept, in iteration order, summary last."""
        counts: dict[str, int] = {}
        for unit in self.units:
            counts[unit.best_iteration] = counts.get(unit.best_iteration, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: _iteration_order(kv[0])))

    def class_name_share(self) -> tuple[int, int]:
        """(units whose best concept is a control-class name, units with a best concept)."""
        found = [u for u in self.units if u.best_concept]
        return sum(u.is_class_name for u in found), len(found)


def analyse(runs: list[RunView]) -> list[LayerAnalysis]:
    """One analysis per (model, layer, metric) over every unit of `runs` with a best concept."""
    groups: dict[tuple[Any, Any, str], LayerAnalysis] = {}
    for run in runs:
        metric = str(run.config.get("metric") or "auc")
        key = (run.config.get("model"), run.config.get("layer"), metric)
        group = groups.setdefault(key, LayerAnalysis(*key))
        names = class_names(run)
        events = run.events()
        for neuron, view in sorted(run.neurons.items()):
            best = view.best or {}
            if best.get("concept") is None:
                continue
            mine = [e for e in events if e.get("neuron") == neuron]
            group.units.append(
                UnitTrace(
                    run.run_id,
                    neuron,
                    best.get("concept"),
                    _best_label(best, mine),
                    cumulative_best(mine),
                    best.get("concept") in names,
                )
            )
    return [g for g in groups.values() if g.units]


def cumulative_best(events: list[dict[str, Any]]) -> list[float]:
    """The best score after each iteration 0..last (an iteration without a score repeats the
    best so far)."""
    scored = [e for e in events if isinstance(e.get("score"), int | float)]
    if not scored:
        return []
    last = max(int(e["iteration"]) for e in scored)
    curve: list[float] = []
    for iteration in range(last + 1):
        here = [float(e["score"]) for e in scored if int(e["iteration"]) == iteration]
        best = max([*here, *curve[-1:]]) if here or curve else None
        if best is not None:
            curve.append(best)
    return curve


def class_names(run: RunView) -> set[str]:
    """The control classes' names as the run's search called them: from its control store's
    index when it is on this machine, else the ImageNet table under the run's class names
    (an imported original run: the original's)."""
    from nacosae.data.imagenet import imagenet_classes, original_folders

    scheme = run.config.get("class_names") or ("original" if run.record.get("imported") else "ours")
    store = Path(str((run.record.get("control_store") or {}).get("path") or ""))
    classes = _store_classes(store) if str(store) not in ("", ".") else None
    if classes is not None:
        from nacosae.search.controls import class_concepts

        return set(class_concepts(classes, scheme))
    if scheme == "original":
        return {name.replace("_", " ") for name in original_folders().values()}
    return {c.concept for c in imagenet_classes()}


def read_novelty(path: Path) -> tuple[int, int]:
    """(novel concepts, concepts) of a `evaluate --novelty` CSV."""
    try:
        with Path(path).expanduser().open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise NacosaeError(f"cannot read the novelty table {path}: {exc}") from exc
    if rows and "novel" not in rows[0]:
        raise NacosaeError(f"{path} has no 'novel' column: give a CSV of `evaluate --novelty`")
    return sum(r["novel"].strip().lower() == "true" for r in rows), len(rows)


def _store_classes(directory: Path) -> list[dict[str, Any]] | None:
    try:
        index = json.loads((directory / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    classes = index.get("classes") if isinstance(index, dict) else None
    return classes if isinstance(classes, list) else None


def _best_label(best: dict[str, Any], events: list[dict[str, Any]]) -> str:
    if best.get("source") == SUMMARY_LABEL:
        return SUMMARY_LABEL
    iteration = best.get("iteration")
    if iteration is None:  # an imported best the events do not name: its first scoring
        iteration = next(
            (e["iteration"] for e in events if e.get("concept") == best.get("concept")), 0
        )
    return str(iteration)


def _iteration_order(label: str) -> float:
    return float("inf") if label == SUMMARY_LABEL else float(label)
