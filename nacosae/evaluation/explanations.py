"""Explanations to evaluate, read from any method's CSV or from a nacosae run directory.

A CSV needs a neuron column (`neuron`, `unit` or `neuron_id`) and a concept column (`concept`,
`description` or `label`): `nacosae report --format csv`, CoSy's explanation files and
CLIP-Dissect's output (`layer,unit,description,...`) all qualify. Rows of another layer (when the
file has a `layer` column) are left out with a note; several rows for one neuron are each
evaluated, ranked in file order.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from nacosae.errors import NacosaeError
from nacosae.textfiles import csv_text

NEURON_COLUMNS = ("neuron", "unit", "neuron_id")
CONCEPT_COLUMNS = ("concept", "description", "label")


@dataclass(frozen=True)
class Explanation:
    neuron: int
    concept: str
    source: str  # the file or run it came from
    rank: int  # 1 = the method's first (best) concept for this neuron


@dataclass
class ReadResult:
    explanations: list[Explanation]
    notes: list[str]


def _column(fields: list[str], names: tuple[str, ...], what: str, path: Path) -> str:
    lowered = {f.strip().lower(): f for f in fields}
    for name in names:
        if name in lowered:
            return lowered[name]
    raise NacosaeError(
        f"{path} has no {what} column ({', '.join(names)}); its columns: "
        f"{', '.join(fields) or '(none)'}"
    )


def read_csv(path: Path, layer: str | None = None, model: str | None = None) -> ReadResult:
    """Explanations of `path`; one-line errors name the row (counting the header as row 1).
    Rows of another `layer` or `model` (when the file has those columns) are left out with a
    note; a row that repeats an earlier (neuron, concept), as two runs of one unit give, is
    dropped with a note."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NacosaeError(f"explanations file {path} does not exist")
    with csv_text(path, "explanations file") as handle:
        reader = csv.DictReader(handle)
        fields = list(reader.fieldnames or [])
        neuron_col = _column(fields, NEURON_COLUMNS, "neuron", path)
        concept_col = _column(fields, CONCEPT_COLUMNS, "concept", path)
        layer_col = next((f for f in fields if f.strip().lower() == "layer"), None)
        model_col = next((f for f in fields if f.strip().lower() == "model"), None)
        explanations: list[Explanation] = []
        seen: dict[tuple[int, str], int] = {}
        other_layers: set[str] = set()
        other_models: set[str] = set()
        repeats = 0
        skipped_empty = 0
        ranks: dict[int, int] = {}
        for row_number, row in enumerate(reader, start=2):
            neuron_text = (row.get(neuron_col) or "").strip()
            concept = " ".join((row.get(concept_col) or "").split())
            if layer and layer_col and (row.get(layer_col) or "").strip() not in ("", layer):
                other_layers.add(row[layer_col].strip())
                continue
            if model and model_col and (row.get(model_col) or "").strip() not in ("", model):
                other_models.add(row[model_col].strip())
                continue
            if not neuron_text and not concept:
                skipped_empty += 1  # e.g. report's row for a run with no neuron yet
                continue
            try:
                neuron = int(float(neuron_text))
                if float(neuron_text) != neuron or neuron < 0:
                    raise ValueError
            except ValueError:
                raise NacosaeError(
                    f"{path} row {row_number}: {neuron_col} {neuron_text!r} is not a unit number"
                ) from None
            if not concept:
                raise NacosaeError(f"{path} row {row_number}: neuron {neuron} has an empty concept")
            key = (neuron, concept.lower())
            if key in seen:
                repeats += 1
                continue
            seen[key] = row_number
            ranks[neuron] = ranks.get(neuron, 0) + 1
            explanations.append(Explanation(neuron, concept, path.name, ranks[neuron]))
    notes = []
    if other_layers:
        notes.append(f"rows of other layers ignored: {', '.join(sorted(other_layers))}")
    if other_models:
        notes.append(
            f"rows of other models ignored: {', '.join(sorted(other_models))} (this evaluation "
            f"reads {model}'s units; evaluate those with their own --model)"
        )
    if repeats:
        notes.append(f"{repeats} rows repeating an earlier neuron and concept scored once")
    if skipped_empty:
        notes.append(f"{skipped_empty} rows without neuron and concept ignored")
    if not explanations:
        raise NacosaeError(f"{path} holds no explanation" + (f" ({notes[0]})" if notes else ""))
    return ReadResult(explanations, notes)


def read_run(run_dir: Path, top_k: int | None) -> ReadResult:
    """The `top_k` best distinct concepts of each neuron's scored history in a nacosae run;
    without `top_k`, each neuron's listed explanations (`explain --explanations K`) where the
    run lists several, else its best concept."""
    from nacosae.search.history import normalise
    from nacosae.store.runs import read_events

    run_dir = Path(run_dir).expanduser()
    if not (run_dir / "run.json").is_file():
        raise NacosaeError(f"{run_dir} is not a nacosae run directory (no run.json)")
    if top_k is None:
        listed = _listed_explanations(run_dir)
        if listed:
            return ReadResult(listed, [])
        top_k = 1
    if top_k < 1:
        raise NacosaeError("--top-k must be at least 1")
    best: dict[int, dict[str, tuple[float, str]]] = {}
    for event in read_events(run_dir):
        if event.get("score") is None or event.get("concept") is None:
            continue
        by_concept = best.setdefault(int(event["neuron"]), {})
        key = normalise(event["concept"])
        if key not in by_concept or event["score"] > by_concept[key][0]:
            by_concept[key] = (float(event["score"]), event["concept"])
    explanations = []
    for neuron in sorted(best):
        ranked = sorted(best[neuron].values(), key=lambda item: -item[0])[:top_k]
        for rank, (_score, concept) in enumerate(ranked, start=1):
            explanations.append(Explanation(neuron, concept, run_dir.name, rank))
    if not explanations:
        raise NacosaeError(f"the run {run_dir} has no scored concept yet")
    return ReadResult(explanations, [])


def _listed_explanations(run_dir: Path) -> list[Explanation]:
    """summary.json's explanations, when some neuron lists more than one."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
        neurons = summary["neurons"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if not any(len(v.get("explanations") or []) > 1 for v in neurons.values()):
        return []
    return [
        Explanation(int(key), e["concept"], run_dir.name, int(e["rank"]))
        for key, value in sorted(neurons.items(), key=lambda kv: int(kv[0]))
        for e in value.get("explanations") or []
    ]


def run_generation(run_dir: Path) -> dict | None:
    """The search's generation settings recorded in a run (to check the evaluation is held out)."""
    try:
        return json.loads((Path(run_dir) / "run.json").read_text()).get("generation")
    except (OSError, json.JSONDecodeError):
        return None
