"""The original project's run folders read as nacosae run directories (`nacosae import-runs`).

The original (`src/pipeline.py`, `src/history_managing.py`) writes per run
`<save_dir>/<run_id>/`:
- `params.txt`: `key: value` lines (Python reprs of its config dataclasses, `neuron_id`,
  `metric` as AUC / MAD / AVG_ACTIVATION);
- at the end of the run: `generation_history.txt` (`concept,score` per LLM step, the summary
  last), `final_concept_history.txt` (`concept,score`), `reasoning.txt` and `best_concepts.txt`
  (one JSON object per LLM step: `concept`, `reasoning`; `iteration`, `best_concept`,
  `best_score`);
- `images/iteration_<N>_<concept with _>/image_<k>.jpeg` for every LLM step (the summary under
  N = n_iters again; the initial classes' images are not saved).

An imported run has what those files hold: an event per LLM step (iteration, concept, score under
the run's metric, reasoning, images) and the summary at iteration n_iters + 1, as nacosae numbers
them; the initial classes only where they survived into the final history (their other scores
were never written). run.json is marked `imported` (source, what is missing); summary.json holds
the original's own best concept and final history. Each run is written to a staging folder and
renamed, so an interrupted import leaves no half run.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacosae.errors import NacosaeError
from nacosae.store.atomic import atomic_write_json, atomic_write_text
from nacosae.store.runs import EVENTS_FILE, RUN_FILE, SUMMARY_FILE, slugify
from nacosae.textfiles import utf8_or_latin1

PARAMS = "params.txt"
GENERATION = "generation_history.txt"
FINAL_HISTORY = "final_concept_history.txt"
REASONING = "reasoning.txt"
BEST = "best_concepts.txt"
MARKERS = (PARAMS, GENERATION, REASONING)  # any of them makes a folder an original run
METRICS = {"AVG_ACTIVATION": "mean", "AUC": "auc", "MAD": "mad"}
IMPORT_FORMAT = "nacosae-original-run"


@dataclass
class ImportReport:
    imported: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "<source>: why"


def is_original_run(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in MARKERS)


def find_original_runs(sources: list[Path]) -> list[Path]:
    """The run folders given, or inside the folders given (one level down), in name order."""
    found: list[Path] = []
    for source in sources:
        source = Path(source).expanduser()
        if is_original_run(source):
            found.append(source)
        elif source.is_dir():
            inside = sorted(p for p in source.iterdir() if is_original_run(p))
            if not inside:
                raise NacosaeError(
                    f"{source} holds no run of the original project (no {PARAMS}, {GENERATION} "
                    f"or {REASONING}): give its save directory or one of its run folders"
                )
            found.extend(inside)
        else:
            raise NacosaeError(f"{source} does not exist: give the original's run folders")
    return list(dict.fromkeys(found))


def read_params(folder: Path) -> dict[str, Any]:
    """params.txt as values (Python literals where they parse, else the text)."""
    params: dict[str, Any] = {}
    path = folder / PARAMS
    if not path.is_file():
        return params
    for line in _read_text(path).splitlines():
        key, sep, value = line.partition(": ")
        if not sep:
            continue
        try:
            params[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key.strip()] = value.strip()
    return params


def import_runs(sources: list[Path], out: Path) -> ImportReport:
    """Each original run folder under `sources` as a run directory under `out`."""
    report = ImportReport()
    out = Path(out).expanduser()
    for folder in find_original_runs(sources):
        params = read_params(folder)
        run_id = _safe_name(str(params.get("run_id") or folder.name))
        target = out / run_id
        if (target / RUN_FILE).is_file():
            report.skipped.append(f"{folder}: already imported as {target}")
            continue
        staging = out / f".{run_id}.importing"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            _write_run(folder, params, run_id, staging)
            staging.replace(target)
        except NacosaeError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            report.skipped.append(f"{folder}: {exc}")
            continue
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        report.imported.append(target)
    return report


def _write_run(folder: Path, params: dict[str, Any], run_id: str, target: Path) -> None:
    load = params.get("load_config") if isinstance(params.get("load_config"), dict) else {}
    neuron = _neuron(params, folder)
    metric_name = str(params.get("metric") or "AVG_ACTIVATION")
    metric = METRICS.get(metric_name.split(".")[-1], "mean")
    steps = _steps(folder)
    final = _pairs(folder / FINAL_HISTORY)
    n_iters = max(len(steps) - 1, 0)
    events = _initial_events(final, steps, neuron, metric)
    images_dir = folder / "images"
    for k, step in enumerate(steps, start=1):
        summary = k == len(steps) and len(steps) > 1
        iteration = n_iters + 1 if summary else k
        original_iteration = n_iters if summary else k
        events.append(
            {
                "neuron": neuron,
                "iteration": iteration,
                "source": "summary" if summary else "llm",
                "concept": step["concept"],
                "score": step["score"],
                "metrics": {} if step["score"] is None else {metric: step["score"]},
                "reasoning": step.get("reasoning", ""),
                "images": _copy_images(
                    images_dir, original_iteration, step["concept"], target, neuron, iteration
                ),
                "imported": True,
            }
        )
    atomic_write_text(
        target / EVENTS_FILE, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in events)
    )
    best = _best(folder, events)
    scored = [e for e in events if e["score"] is not None]
    curve: list[float] = []
    for event in scored:
        curve.append(max(event["score"], curve[-1]) if curve else event["score"])
    history = sorted(({"concept": c, "score": s} for c, s in final), key=lambda h: -h["score"])
    atomic_write_json(
        target / SUMMARY_FILE,
        {
            "run_id": run_id,
            "metric": metric,
            "neurons": {
                str(neuron): {
                    "neuron": neuron,
                    "metric": metric,
                    "best": best,
                    "history": history,
                    "best_so_far": curve,
                    "concepts_scored": len(scored),
                    "llm_calls": len(steps),
                    "parse_retries": 0,
                }
            },
        },
    )
    complete = (folder / GENERATION).is_file()
    missing = ["the initial classes' scores (only those in the final history are kept)"]
    if not complete:
        missing.append(f"the per-step scores ({GENERATION} is absent)")
    layer = (load.get("explained_model_kwargs") or {}).get("layer") or _layer_of(params)
    image_config = params.get("image_generation_config") or {}
    t2i_kwargs = load.get("text_to_image_model_kwargs") or {}
    llm_kwargs = load.get("language_model_kwargs") or {}
    record = {
        "run_id": run_id,
        "status": "done" if steps else "failed",
        "error": None if steps else "the original run wrote no step (it stopped early)",
        "imported": {
            "format": IMPORT_FORMAT,
            "from": str(folder.resolve()),
            "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "missing": missing,
            "params": params,
        },
        "neurons": [neuron],
        "config": {
            "neurons": [str(neuron)],
            "model": load.get("explained_model_id"),
            "layer": layer,
            "metric": metric,
            "n_iters": n_iters,
            "num_img": image_config.get("n_images"),
            "t2i_model": load.get("text_to_image_model_id"),
            "language_model": load.get("language_model_id"),
            "num_inf_steps": t2i_kwargs.get("num_inference_steps"),
            "max_new_tokens": llm_kwargs.get("max_new_tokens"),
            "prompt": llm_kwargs.get("prompt_path"),
            "summary_prompt": llm_kwargs.get("summary_prompt_path"),
            "control_strategy": "dissimilar-class",
            "preset": [],
        },
    }
    atomic_write_json(target / RUN_FILE, record)


def _steps(folder: Path) -> list[dict[str, Any]]:
    """Each LLM step (the summary last): concept, score and reasoning, from whichever files
    the run wrote."""
    scored = _pairs(folder / GENERATION)
    reasons = _json_lines(folder / REASONING)
    count = max(len(scored), len(reasons))
    steps = []
    for k in range(count):
        concept, score = scored[k] if k < len(scored) else (None, None)
        reason = reasons[k] if k < len(reasons) else {}
        concept = concept if concept is not None else str(reason.get("concept", ""))
        steps.append(
            {"concept": concept, "score": score, "reasoning": str(reason.get("reasoning", ""))}
        )
    return steps


def _initial_events(
    final: list[tuple[str, float]], steps: list[dict[str, Any]], neuron: int, metric: str
) -> list[dict[str, Any]]:
    """The initial classes that survived into the final history (never proposed by the LLM:
    their score is still the one scored first)."""
    proposed = {s["concept"] for s in steps}
    return [
        {
            "neuron": neuron,
            "iteration": 0,
            "source": "initial",
            "concept": concept,
            "score": score,
            "metrics": {metric: score},
            "images": [],
            "imported": True,
        }
        for concept, score in final
        if concept not in proposed
    ]


def _best(folder: Path, events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The original's own final best (the last line of best_concepts.txt), else the best score
    among the events; with the event that scored it."""
    lines = _json_lines(folder / BEST)
    scored = [e for e in events if e["score"] is not None]
    if lines and "best_concept" in lines[-1]:
        concept, score = str(lines[-1]["best_concept"]), lines[-1].get("best_score")
        match = [e for e in scored if e["concept"] == concept]
        event = match[-1] if match else {"iteration": None, "source": None, "metrics": {}}
        return {
            "concept": concept,
            "score": float(score) if isinstance(score, int | float) else event.get("score"),
            "iteration": event["iteration"],
            "source": event["source"],
            "metrics": event["metrics"],
        }
    if not scored:
        return None
    event = max(scored, key=lambda e: e["score"])
    return {k: event[k] for k in ("concept", "score", "iteration", "source", "metrics")}


def _copy_images(
    images_dir: Path, iteration: int, concept: str, target: Path, neuron: int, ours: int
) -> list[str]:
    """The step's images, hard-linked (else copied) into the run's own layout."""
    source = images_dir / f"iteration_{iteration}_{concept.replace(' ', '_')}"
    if not source.is_dir():
        return []
    folder = target / "images" / str(neuron) / f"{ours:02d}_{slugify(concept)}"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k, image in enumerate(sorted(source.glob("image_*"), key=_image_number)):
        copied = folder / f"{k}{image.suffix.lower()}"
        try:
            os.link(image, copied)
        except OSError:
            shutil.copyfile(image, copied)
        files.append(copied.relative_to(target).as_posix())
    return files


def _image_number(path: Path) -> int:
    digits = path.stem.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else 0


def _pairs(path: Path) -> list[tuple[str, float]]:
    """`concept,score` lines (a concept may hold commas: the score is after the last)."""
    pairs = []
    for number, line in _numbered_lines(path):
        concept, _, score = line.rpartition(",")
        try:
            pairs.append((concept.strip(), float(score)))
        except ValueError as exc:
            raise NacosaeError(
                f"{path} line {number} is not 'concept,score': {line[:80]!r}"
            ) from exc
    return pairs


def _json_lines(path: Path) -> list[dict[str, Any]]:
    found = []
    for number, line in _numbered_lines(path):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise NacosaeError(f"{path} line {number} is not JSON: {line[:80]!r}") from exc
        found.append(value if isinstance(value, dict) else {})
    return found


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """The file's non-blank lines with their numbers (none when the run did not write it)."""
    if not path.is_file():
        return []
    lines = enumerate(_read_text(path).splitlines(), start=1)
    return [(number, line) for number, line in lines if line.strip()]


def _read_text(path: Path) -> str:
    return utf8_or_latin1(path)[0]


def _neuron(params: dict[str, Any], folder: Path) -> int:
    value = params.get("neuron_id")
    if isinstance(value, int):
        return value
    raise NacosaeError(
        f"{folder / PARAMS} names no neuron_id: the run cannot be imported without it"
    )


def _layer_of(params: dict[str, Any]) -> str | None:
    path = str(params.get("model_layer_activations_path") or "")
    return Path(path).name or None


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".-")
    return cleaned or "imported-run"
