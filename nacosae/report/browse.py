"""What the dashboard shows, kept out of Streamlit scripts so it can be tested and reused:
a fast index of runs (run.json only), filters, and per-run details loaded on demand."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacosae.report.runs import RunView, load_run
from nacosae.store.runs import RUN_FILE, effective_status, is_run_directory

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


def activation_text(value: float) -> str:
    """An activation as shown beside an image: four significant digits, since a unit's scale
    is its own (0.0031 must not read 0.00)."""
    return f"{value:.4g}"


def index_runs(runs_dir: Path) -> list[RunEntry]:
    """Read each run.json once; damaged runs are listed with their error."""
    entries = []
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    folders = (p for p in runs_dir.iterdir() if is_run_directory(p))
    for path in sorted(folders, reverse=True):
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
    for path in sorted(p for p in runs_dir.iterdir() if is_run_directory(p)):
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


def best_event(events: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any] | None:
    """The scored event of the neuron's best concept (its metrics, images, controls)."""
    matching = [
        e for e in events if e.get("concept") == best.get("concept") and e.get("score") is not None
    ]
    return max(matching, key=lambda e: e["score"]) if matching else None


def run_evaluation(run: RunView) -> dict[tuple[int, str], dict[str, str]]:
    """(neuron, concept) -> row of the CoSy evaluation that `nacosae evaluate RUN_DIR` wrote
    into the run's `evaluation/` folder (the first row of each pair); empty when there is none."""
    import csv

    path = run.path / "evaluation" / "evaluation.csv"
    if not path.is_file():
        return {}
    found: dict[tuple[int, str], dict[str, str]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            found.setdefault((int(row["neuron"]), row["concept"]), row)
    return found


def held_out_score(run: RunView, neuron: int, concept: str | None) -> dict[str, float] | None:
    """The held-out AUC and MAD of the neuron's concept, when the run has been evaluated."""
    row = run_evaluation(run).get((neuron, concept or ""))
    return {"AUC": float(row["AUC"]), "MAD": float(row["MAD"])} if row else None


def top_control_images(run: RunView, neuron: int, k: int = 8) -> list[Any]:
    """The control images that drive the unit most, from the run's control store (empty when
    the store is not on this machine)."""
    from nacosae.errors import NacosaeError
    from nacosae.evaluation.top_images import top_images
    from nacosae.store.activations import ControlStore

    directory = (run.record.get("control_store") or {}).get("path")
    if not directory or not (Path(directory) / "index.json").is_file():
        return []
    try:
        return top_images(ControlStore(Path(directory), verify=False), neuron, k)
    except (NacosaeError, OSError):
        return []


def parameter_rows(run: RunView) -> list[dict[str, str]]:
    """The run's settings as a readable two-column table (the raw run.json stays available)."""
    config, record = run.config, run.record
    generation = record.get("generation") or {}
    models = record.get("models") or {}
    totals = record.get("totals") or {}
    rows = {
        "explained model": f"{config.get('model')} {config.get('layer')} ({config.get('weights')})",
        "text-to-image": f"{generation.get('model_id', config.get('t2i_model'))}, "
        f"{generation.get('num_inference_steps', '?')} steps, guidance "
        f"{generation.get('guidance_scale')}",
        "LLM": str((models.get("llm") or {}).get("id", config.get("language_model"))),
        "iterations, images per concept": f"{config.get('n_iters')}, {config.get('num_img')}",
        "metric": str(config.get("metric")),
        "control strategy": str(config.get("control_strategy")),
        "seed": str(config.get("seed")),
        "preset": ", ".join(config.get("preset") or []) or "-",
        "totals": ", ".join(f"{k} {v}" for k, v in totals.items() if not isinstance(v, dict)),
        "versions": ", ".join(f"{k} {v}" for k, v in (record.get("versions") or {}).items()),
    }
    return [{"setting": k, "value": v} for k, v in rows.items()]


def image_activations(
    run: RunView, neuron: int, concept: str, images: list[Path]
) -> list[float | None]:
    """The unit's activation on each of a concept's images, from the concept cache entry the
    run's images are hard links of (None where it is not on this machine)."""
    import os

    from safetensors import safe_open

    from nacosae.store.concepts import content_key

    unknown: list[float | None] = [None] * len(images)
    root = Path(run.config.get("controls_root") or "").parent / "concepts"
    if not images or not root.is_dir():
        return unknown
    wanted = content_key({"concept": concept})
    for folder in root.glob(f"*/{wanted}"):
        try:
            if not os.path.samefile(folder / "0.png", images[0]):
                continue
        except OSError:
            continue
        for path in folder.glob("activations-*.safetensors"):
            try:
                with safe_open(str(path), "numpy") as handle:
                    vision = json.loads((handle.metadata() or {}).get("vision", "{}"))
                    if (vision.get("model"), vision.get("layer")) != (
                        run.config.get("model"),
                        run.config.get("layer"),
                    ):
                        continue
                    values = handle.get_tensor("activations")
            except Exception:  # noqa: BLE001 - a damaged cache entry shows no values
                continue
            if values.shape[0] >= len(images) and values.shape[1] > neuron:
                return [float(v) for v in values[: len(images), neuron]]
    return unknown


def layer_rows(run: RunView) -> list[dict[str, Any]]:
    """One row per unit: best concept, its score under the run's metric, the held-out AUC when
    an evaluation exists, and where the concept came from."""
    metric = run.config.get("metric", "auc")
    held_out = {key: float(row["AUC"]) for key, row in run_evaluation(run).items()}
    rows = []
    for neuron, view in sorted(run.neurons.items()):
        best = view.best or {}
        rows.append(
            {
                "neuron": neuron,
                "concept": best.get("concept"),
                metric: best.get("score"),
                "held-out AUC": held_out.get((neuron, best.get("concept"))),
                "source": best.get("source"),
            }
        )
    return rows
