"""The evaluation job: fresh images of every explanation's concept, scored CoSy's way.

Held out by construction: the images come from another prompt ("realistic photo of a close up of
{concept}") and another noise scheme (one CPU generator seeded 0) than the search's, by default
with another text-to-image model (SDXL base 1.0, CoSy's). Each distinct concept is rendered once
for every neuron that names it, and one forward pass per image batch gives the activations of
every unit of the layer. Images and activations go to the concept cache under the evaluation's
own generation key, so a killed evaluation rerun with the same command continues where it
stopped, and a later evaluation with the same settings renders nothing.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from nacosae import progress
from nacosae.errors import NacosaeError, NeuronOutOfRange
from nacosae.evaluation.explanations import Explanation, ReadResult, read_csv, read_run
from nacosae.models.cache import ModelCache, ModelHandle, ModelSpec
from nacosae.models.concept_images import (
    FillCounts,
    FillSettings,
    ImageSide,
    Request,
    fill_concept_cache,
)
from nacosae.store.concepts import ConceptKeys

if TYPE_CHECKING:
    import numpy as np

    from nacosae.distributed.cluster import Cluster
    from nacosae.models.preprocessing import Preprocessing
    from nacosae.models.sides import Executor
    from nacosae.models.units import Readout

COSY_T2I = "stabilityai/stable-diffusion-xl-base-1.0"
COSY_PROMPT = "realistic photo of a close up of {concept}"
COSY_IMAGES = 50
COSY_SEED = 0
CSV_COLUMNS = (
    "neuron",
    "concept",
    "AUC",
    "U1",
    "p",
    "MAD",
    "AUPRC",
    "correlation",
    "source",
    "rank",
)
SUMMARISED = ("AUC", "MAD", "AUPRC", "correlation")
# per-image seeded step noise for ancestral schedulers (v1 used the global RNG: entries rendered
# then could not be reproduced, so they are not reused)
STEP_NOISE = "per-image-v2"
SEARCH_PROMPT_FORMS = {"varied": "a realistic photo of a", "line": "a realstic photo of a"}
ROUND_CONCEPTS = 4  # concepts rendered per side before the round is saved


@dataclass
class EvaluateRequest:
    """What `nacosae evaluate` was asked (defaults: CoSy's protocol)."""

    explanations: Path | None  # a CSV, or a run directory with top_k (None: --images says)
    model: str
    layer: str
    controls_root: Path
    out: Path
    weights: str = "default"
    token_pooling: str = "cls"
    sae: str | None = None
    latent_pooling: str = "auto"
    t2i_model: str = COSY_T2I
    num_img: int = COSY_IMAGES
    image_prompt: str = COSY_PROMPT
    seed: int = COSY_SEED
    num_inf_steps: int | None = None
    guidance_scale: float | None = None
    controls: Path | None = None  # another control store directory of the same model/layer
    top_k: int | None = None
    t2i_batch: int | None = None  # None: the memory plan's (8 on a CPU)
    device: str = "auto"
    ray: str | None = None  # a Ray cluster: local, auto or an address (None: this process)
    ray_workers: int | None = None


@dataclass
class EvaluateResult:
    out: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    notes: list[str]


def recorded_settings(request: EvaluateRequest) -> dict[str, Any]:
    """The settings summary.json records (paths as text)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(request).items()}


def folder_for(request: EvaluateRequest) -> Path:
    """`request.out`, unless it holds an evaluation with other settings: then the first free
    `<out>-2`, `<out>-3`, ... beside it (said), so no earlier evaluation is overwritten."""
    wanted = {k: v for k, v in recorded_settings(request).items() if k != "out"}
    candidate, number = Path(request.out), 1
    while (candidate / "summary.json").is_file():
        try:
            earlier = json.loads((candidate / "summary.json").read_text(encoding="utf-8"))
            settings = {k: v for k, v in earlier.get("settings", {}).items() if k != "out"}
        except (OSError, ValueError, AttributeError):
            settings = None
        if settings == wanted:
            break
        number += 1
        candidate = Path(request.out).with_name(f"{Path(request.out).name}-{number}")
    if candidate != Path(request.out):
        progress.info(
            f"{request.out} holds an evaluation with other settings: writing to {candidate}"
        )
    return candidate


def read_explanations(request: EvaluateRequest) -> ReadResult:
    if request.explanations is None:
        raise NacosaeError("give the explanations: a CSV or a run directory")
    source = Path(request.explanations).expanduser()
    if source.is_dir():
        return read_run(source, request.top_k)
    if request.top_k is not None:
        raise NacosaeError("--top-k reads a nacosae run directory, not a CSV file")
    return read_csv(source, request.layer, request.model)


def held_out(request: EvaluateRequest) -> tuple[bool, str]:
    """Whether the evaluation images differ from the search's by construction, and why not."""
    from nacosae.evaluation.explanations import run_generation

    source = Path(request.explanations).expanduser()
    search = run_generation(source) if source.is_dir() else None
    if not search:
        return True, "the search's prompts (a realistic photo, angle, lighting) differ"
    form = SEARCH_PROMPT_FORMS.get(search.get("prompts", "varied"), "")
    same_prompt = request.image_prompt.strip().lower().startswith(form + " {concept}")
    same_model = search.get("model_id") == request.t2i_model
    if same_prompt and same_model:
        return False, (
            f"--image-prompt {request.image_prompt!r} is the search's own prompt with the same "
            "text-to-image model: the score is not held out"
        )
    return True, "the evaluation prompt differs from the search's"


def evaluate(request: EvaluateRequest, cache: ModelCache) -> EvaluateResult:
    """Evaluate every explanation of `request` (see the module docstring)."""
    from nacosae.config import writable_folder
    from nacosae.controls import open_controls
    from nacosae.distributed.cluster import check_ray_options
    from nacosae.models.concept_images import check_num_img
    from nacosae.models.devices import resolve_device
    from nacosae.models.preprocessing import Preprocessing
    from nacosae.models.units import make_readout

    check_num_img(request.num_img)
    check_ray_options(request.ray, request.ray_workers)
    if "{concept}" not in request.image_prompt:
        raise NacosaeError("--image-prompt must contain {concept}")
    found = read_explanations(request)
    readout = make_readout(request.token_pooling, request.sae, request.latent_pooling)  # type: ignore[arg-type]
    store = open_controls(request.controls_root, request.model, request.layer, readout)
    controls = control_store_of(request, store)
    check_neurons(found.explanations, store.n_units, request)
    request.out = folder_for(request)
    writable_folder(request.out, "the evaluation folder (--out)")
    cluster = None
    if request.ray:  # the workers resolve the device: the driver may have no GPU
        from nacosae.distributed.cluster import connect

        cluster = connect(request.ray)
    else:
        resolve_device(request.device)  # an unavailable device is an error before any work
    is_held_out, why = held_out(request)
    notes = list(found.notes)
    if not is_held_out:
        progress.warn(why)
        notes.append(why)
    started = time.perf_counter()
    job = EvaluationJob(
        request,
        store.index["dtype"],
        store.index["weights"],
        Preprocessing.from_json(store.index["preprocessing_recipe"]),
        readout,
    )
    concepts = list(dict.fromkeys(e.concept for e in found.explanations))
    counts = FillCounts()
    with _executor(job, cache, cluster) as executor:
        facts = executor.facts()
        activations = concept_activations(request, executor, facts, concepts, counts)
        backoffs = list(executor.notes)
    rows = score_rows(found.explanations, activations, controls)
    summary = {
        "explanations": str(request.explanations),
        "model": request.model,
        "layer": request.layer,
        "held_out": is_held_out,
        "held_out_reason": why,
        "settings": recorded_settings(request),
        "control_store": str(controls.directory),
        "control_images": controls.n_images,
        "rows": len(rows),
        "neurons": len({e.neuron for e in found.explanations}),
        "distinct_concepts": len(concepts),
        "counts": asdict(counts),
        "memory_plan": facts.memory_plan,
        "backoffs": backoffs,
        "seconds": round(time.perf_counter() - started, 3),
        **metric_summaries(rows),
        "notes": notes,
    }
    write_outputs(request.out, rows, summary)
    return EvaluateResult(request.out, rows, summary, notes)


@contextmanager
def _executor(job: EvaluationJob, cache: ModelCache, cluster: Cluster | None) -> Iterator[Executor]:
    """The evaluation's models here, or on the workers of a Ray cluster (ended afterwards,
    unless they belong to `nacosae serve`)."""
    from nacosae.models.sides import InProcess

    if cluster is None:
        yield InProcess(job, cache)
        return
    from nacosae.distributed.pool import WorkerPool

    with WorkerPool.running(cluster, job, job.request.ray_workers) as pool:
        yield pool


def concept_activations(
    request: EvaluateRequest,
    executor: Executor,
    facts: EvaluationFacts,
    concepts: list[str],
    counts: FillCounts,
) -> dict[str, np.ndarray]:
    """[num_img, units] activations per concept, from the concept cache when every generation
    setting matches, else rendered once each (one concept per call) in rounds of a few concepts
    per side, each round saved before the next (a killed evaluation continues from there)."""
    from nacosae.store.concepts import ConceptCache

    cache = ConceptCache(Path(request.controls_root).parent / "concepts", facts.keys)
    fill = FillSettings(request.num_img, request.seed, facts.t2i_batch, one_concept_per_call=True)
    with progress.progress_bar("concepts") as bar:
        task = bar.add_task("evaluating", total=len(concepts))
        return fill_concept_cache(
            cache,
            executor,
            concepts,
            fill,
            counts,
            round_size=ROUND_CONCEPTS * executor.width,
            on_round=lambda done: bar.advance(task, done),
        )


def control_store_of(request: EvaluateRequest, store: Any) -> Any:
    """The control images: every image of the model/layer store, or of `--controls STORE`
    (which must hold the same model, layer, weights and units)."""
    from nacosae.store.activations import ControlStore

    if request.controls is None:
        return store
    other = ControlStore(Path(request.controls).expanduser())
    for key in ("model", "layer", "weights", "preprocessing", "units"):
        if other.index["identity"].get(key) != store.index["identity"].get(key):
            raise NacosaeError(
                f"--controls {request.controls} holds other activations than the store of "
                f"{request.model} {request.layer} ({key} differs)"
            )
    return other


def check_neurons(explanations: list[Explanation], n_units: int, request: EvaluateRequest) -> None:
    for e in explanations:
        if e.neuron >= n_units:
            raise NeuronOutOfRange(
                f"{e.source}: neuron {e.neuron} ({e.concept!r}) is outside layer {request.layer} "
                f"of {request.model}, which has units 0..{n_units - 1}"
            )


@dataclass(frozen=True)
class EvaluationJob:
    """What the evaluation's models need, picklable: a Ray worker builds them from it."""

    request: EvaluateRequest
    store_dtype: str
    store_weights: str
    recipe: Preprocessing  # of the control store
    readout: Readout
    lead_methods: ClassVar[tuple[str, ...]] = ()

    def key(self) -> str:
        from nacosae.store.concepts import content_key

        settings = {k: str(v) for k, v in asdict(self.request).items()}
        for per_run in ("explanations", "out", "top_k", "controls"):
            settings.pop(per_run)
        return content_key(
            {
                "evaluation": settings,
                "store": [self.store_dtype, self.store_weights],
                "recipe": self.recipe.describe(),
                "readout": self.readout.identity(),
            }
        )

    def build(self, cache: ModelCache) -> EvaluationSide:
        from nacosae.models.devices import resolve_device

        return EvaluationSide(self, cache, resolve_device(self.request.device))


@dataclass(frozen=True)
class EvaluationFacts:
    keys: ConceptKeys
    device: str
    t2i_batch: int  # images per text-to-image call, from the memory plan unless given
    memory_plan: dict[str, Any]


class EvaluationSide(ImageSide):
    """The evaluation's text-to-image pipeline and explained model, built through `cache`: in
    this process, or on each Ray worker."""

    def __init__(self, job: EvaluationJob, cache: ModelCache, device: str) -> None:
        from nacosae.models import memory
        from nacosae.models.backoff import BackOff
        from nacosae.models.devices import compute_dtype
        from nacosae.models.revisions import model_folder, resolve_revision
        from nacosae.models.text2image import (
            GenerationSettings,
            TextToImage,
            generation_defaults,
            load_pipeline,
        )
        from nacosae.models.vision import load_vision, vision_activations, vision_spec

        request = self.request = job.request
        self.job, self.device = job, device
        revision = resolve_revision(
            request.t2i_model,
            what="text-to-image model",
            download_option=f" --t2i-model {request.t2i_model}",
        )
        folder = model_folder(request.t2i_model, revision)
        defaults = generation_defaults(request.t2i_model, folder)
        guidance = defaults.guidance if request.guidance_scale is None else request.guidance_scale
        self.generation = GenerationSettings(
            model_id=request.t2i_model,
            num_inference_steps=request.num_inf_steps or defaults.steps,
            guidance_scale=guidance,
            prompts="template",
            seeds="single",
            prompt_template=request.image_prompt,
        )
        vision_dtype = compute_dtype("vision", device, job.store_dtype)
        self.plan = self._plan(folder, vision_dtype, guidance > 1.0)
        cache.set_budget(None if device == "cpu" else self.plan.cache_budget)
        sizes = {
            kind: self.plan.batch(kind, memory.CPU_BATCHES[kind]) for kind in ("t2i", "vision")
        }
        self.backoff = BackOff(sizes)
        self.t2i = ModelHandle(
            cache,
            ModelSpec(
                "t2i",
                request.t2i_model,
                revision,
                compute_dtype("t2i", device),
                device,
                self.plan.offload("t2i", "cpu"),  # type: ignore[arg-type]
            ),
            load_pipeline,
        )
        self.vision = ModelHandle(
            cache,
            vision_spec(request.model, request.weights, device, vision_dtype, "cpu"),
            load_vision,
        )
        for kind, handle in (("t2i", self.t2i), ("vision", self.vision)):
            placement = self.plan.placement(kind)
            if placement is not None:
                cache.set_working(handle.spec, placement.computing)
        self.renderer = TextToImage(self.t2i, self.generation, self.backoff)
        self.activations = vision_activations(
            self.vision, request.layer, job.recipe, job.readout, self.backoff
        )

    def _plan(self, folder: Any, vision_dtype: str, guided: bool) -> Any:
        """The evaluation's memory plan: the pipeline and the explained model (no LLM)."""
        from nacosae.models import memory
        from nacosae.models.devices import compute_dtype

        request = self.request
        batches = {"t2i": request.t2i_batch}
        if self.device == "cpu":
            needs = [
                memory.Need("vision", request.model, 0, 0, 0, 0, 0, "images"),
                memory.Need("t2i", request.t2i_model, 0, 0, 0, 0, 0, "images"),
            ]
            return memory.plan_memory(needs, "cpu", 0, "auto", batches)
        folder = folder or memory.files_of(request.t2i_model, None, "--t2i-model")
        dtype = compute_dtype("t2i", self.device)
        needs = [
            memory.vision_model_need(request.model, self.job.recipe.size, vision_dtype),
            memory.t2i_need(folder, request.t2i_model, dtype, None, guided),
        ]
        budget = memory.memory_budget(self.device, None)
        return memory.plan_memory(needs, self.device, budget, "auto", batches)

    def drain_notes(self) -> list[dict[str, Any]]:
        return self.backoff.drain()

    def facts(self) -> EvaluationFacts:
        """The concept-cache keys of the evaluation's settings, once the weights are checked."""
        from nacosae.models.concept_images import generation_key, vision_key
        from nacosae.models.text2image import t2i_facts
        from nacosae.models.vision import weights_id_of

        request = self.request
        variant, _side = t2i_facts(self.t2i)
        weights_id = weights_id_of(self.vision)
        if weights_id != self.job.store_weights:
            raise NacosaeError(
                f"the control store was built with weights {self.job.store_weights}, not "
                f"{weights_id}: pass the same --weights as to `nacosae controls`"
            )
        keys = ConceptKeys(
            generation=generation_key(
                self.generation,
                self.t2i,
                variant,
                request.seed,
                self.device,
                step_noise=STEP_NOISE,
            ),
            vision=vision_key(
                request.model,
                request.layer,
                weights_id,
                self.vision,
                self.job.recipe,
                self.job.readout,
            ),
        )
        return EvaluationFacts(keys, self.device, self.backoff.sizes["t2i"], self.plan.record())

    def render_many(self, calls: list[Request], seed: int) -> list[Any]:
        return self.renderer.render_many(calls, seed)


def score_rows(
    explanations: list[Explanation], activations: dict[str, Any], controls: Any
) -> list[dict[str, Any]]:
    from nacosae.evaluation.metrics import cosy_scores

    rows = []
    columns: dict[int, Any] = {}
    for e in explanations:
        if e.neuron not in columns:
            columns[e.neuron] = controls.unit(e.neuron).float().numpy()
        scores = cosy_scores(columns[e.neuron], activations[e.concept][:, e.neuron])
        rows.append(
            {"neuron": e.neuron, "concept": e.concept, **scores, "source": e.source, "rank": e.rank}
        )
    return rows


def metric_summaries(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from nacosae.evaluation.metrics import summarise

    first_per_neuron: dict[int, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r["rank"]):
        first_per_neuron.setdefault(row["neuron"], row)
    chosen = list(first_per_neuron.values())
    return {
        **{metric: summarise([r[metric] for r in chosen]) for metric in SUMMARISED},
        "summarised": "one row per neuron (its first-ranked explanation), n = neurons",
    }


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_outputs(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    from nacosae.store.atomic import atomic_write_json, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "evaluation.csv", to_csv(rows))
    atomic_write_json(out / "summary.json", summary)
