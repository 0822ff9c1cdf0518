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
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nacosae import progress
from nacosae.distributed.shipped import ShippedImages
from nacosae.errors import NacosaeError, NeuronOutOfRange
from nacosae.evaluation.explanations import Explanation, ReadResult, read_csv, read_run
from nacosae.models.cache import ModelCache, ModelHandle, ModelSpec

COSY_T2I = "stabilityai/stable-diffusion-xl-base-1.0"
COSY_PROMPT = "realistic photo of a close up of {concept}"
COSY_IMAGES = 50
COSY_SEED = 0
CSV_COLUMNS = ("neuron", "concept", "AUC", "U1", "p", "MAD", "source", "rank")
# per-image seeded step noise for ancestral schedulers (v1 used the global RNG: entries rendered
# then could not be reproduced, so they are not reused)
STEP_NOISE = "per-image-v2"
SEARCH_PROMPT_FORMS = {"varied": "a realistic photo of a", "line": "a realstic photo of a"}


@dataclass
class EvaluateRequest:
    """What `nacosae evaluate` was asked (defaults: CoSy's protocol)."""

    explanations: Path  # a CSV, or a nacosae run directory with top_k
    model: str
    layer: str
    controls_root: Path
    out: Path
    weights: str = "default"
    token_pooling: str = "cls"
    sae: str | None = None
    t2i_model: str = COSY_T2I
    num_img: int = COSY_IMAGES
    image_prompt: str = COSY_PROMPT
    seed: int = COSY_SEED
    num_inf_steps: int | None = None
    guidance_scale: float | None = None
    controls: Path | None = None  # another control store directory of the same model/layer
    top_k: int | None = None
    t2i_batch: int = 8
    device: str = "auto"
    ray: str | None = None  # a Ray cluster: local, auto or an address (None: this process)
    ray_workers: int | None = None
    preset: list[str] = field(default_factory=list)


@dataclass
class EvaluateResult:
    out: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    notes: list[str]


def read_explanations(request: EvaluateRequest) -> ReadResult:
    source = Path(request.explanations).expanduser()
    if source.is_dir():
        return read_run(source, request.top_k or 1)
    if request.top_k is not None:
        raise NacosaeError("--top-k reads a nacosae run directory, not a CSV file")
    return read_csv(source, request.layer)


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
    from nacosae.controls import open_controls, resolve_device
    from nacosae.models.units import make_readout

    if request.num_img < 2:
        raise NacosaeError("--num-img must be at least 2 (scores compare image sets)")
    if "{concept}" not in request.image_prompt:
        raise NacosaeError("--image-prompt must contain {concept}")
    found = read_explanations(request)
    readout = make_readout(request.token_pooling, request.sae)  # type: ignore[arg-type]
    store = open_controls(request.controls_root, request.model, request.layer, readout)
    controls = _control_store(request, store)
    _check_neurons(found.explanations, store.n_units, request)
    writable_folder(request.out, "the evaluation folder (--out)")
    cluster = None
    if request.ray:  # the workers resolve the device: the driver may have no GPU
        from nacosae.distributed.cluster import connect

        device, cluster = request.device, connect(request.ray)
    else:
        device = resolve_device(request.device)
    is_held_out, why = held_out(request)
    notes = list(found.notes)
    if not is_held_out:
        progress.warn(why)
        notes.append(why)
    started = time.perf_counter()
    from nacosae.models.preprocessing import Preprocessing

    job = EvaluationJob(
        request,
        store.index["dtype"],
        store.index["weights"],
        Preprocessing.from_json(store.index["preprocessing_recipe"]),
        readout,
    )
    concepts = list(dict.fromkeys(e.concept for e in found.explanations))
    with _models(job, cache, device, cluster) as models:
        images = ConceptImages(job, models)
        activations = images.activations_of(concepts)
    rows = score_rows(found.explanations, activations, controls)
    summary = {
        "explanations": str(request.explanations),
        "model": request.model,
        "layer": request.layer,
        "held_out": is_held_out,
        "held_out_reason": why,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(request).items()},
        "control_store": str(controls.directory),
        "control_images": controls.n_images,
        "rows": len(rows),
        "neurons": len({e.neuron for e in found.explanations}),
        "distinct_concepts": len(concepts),
        "counts": images.counts,
        "seconds": round(time.perf_counter() - started, 3),
        **_summaries(rows),
        "notes": notes,
    }
    write_outputs(request.out, rows, summary)
    return EvaluateResult(request.out, rows, summary, notes)


@contextmanager
def _models(job: EvaluationJob, cache: ModelCache, device: str, cluster: Any) -> Iterator[Any]:
    """The evaluation's models here, or on the workers of a Ray cluster (ended afterwards,
    unless they belong to `nacosae serve`)."""
    if cluster is None:
        yield EvaluationModels(job, cache, device)
        return
    from nacosae.distributed.pool import WorkerPool

    with WorkerPool.running(cluster, job, job.request.ray_workers) as pool:
        yield pool


def _control_store(request: EvaluateRequest, store: Any) -> Any:
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


def _check_neurons(explanations: list[Explanation], n_units: int, request: EvaluateRequest) -> None:
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
    recipe: Any  # models.preprocessing.Preprocessing of the control store
    readout: Any  # models.units.Readout
    needs_llm = False

    def shippable(self) -> EvaluationJob:
        return self

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

    def build(self, cache: ModelCache, with_llm: bool = False) -> EvaluationModels:
        from nacosae.controls import resolve_device

        return EvaluationModels(self, cache, resolve_device(self.request.device))


@dataclass(frozen=True)
class EvaluationFacts:
    keys: Any  # store.concepts.ConceptKeys
    device: str


class EvaluationModels(ShippedImages):
    """The evaluation's text-to-image pipeline and explained model, built through `cache`: in
    this process, or on each Ray worker (the same methods as `search.model_side.LocalModels`)."""

    def __init__(self, job: EvaluationJob, cache: ModelCache, device: str) -> None:
        from nacosae.controls import compute_dtype, load_vision, vision_spec
        from nacosae.models.revisions import resolve_revision
        from nacosae.models.text2image import (
            GenerationSettings,
            TextToImage,
            default_generation,
            load_pipeline,
        )
        from nacosae.search.components import vision_activations

        request = self.request = job.request
        self.job, self.device = job, device
        revision = resolve_revision(
            request.t2i_model,
            what="text-to-image model",
            download_option=f" --t2i-model {request.t2i_model}",
        )
        t2i_dtype = "float16" if device != "cpu" else "float32"
        self.t2i = ModelHandle(
            cache,
            ModelSpec("t2i", request.t2i_model, revision, t2i_dtype, device, "cpu"),
            load_pipeline,
        )
        vision_dtype = compute_dtype(job.store_dtype, device)
        self.vision = ModelHandle(
            cache,
            vision_spec(request.model, request.weights, device, vision_dtype, "cpu"),
            load_vision,
        )
        steps, guidance = default_generation(request.t2i_model)
        self.generation = GenerationSettings(
            model_id=request.t2i_model,
            num_inference_steps=request.num_inf_steps or steps,
            guidance_scale=guidance if request.guidance_scale is None else request.guidance_scale,
            prompts="template",
            seeds="single",
            prompt_template=request.image_prompt,
        )
        self.renderer = TextToImage(self.t2i, self.generation)
        self.activations = vision_activations(self.vision, request.layer, job.recipe, job.readout)

    def load_llm(self) -> None:
        """An evaluation has no LLM."""

    def facts(self) -> EvaluationFacts:
        """The concept-cache keys of the evaluation's settings, once the weights are checked."""
        from nacosae.search.components import generation_key, t2i_facts, vision_key
        from nacosae.store.concepts import ConceptKeys

        request = self.request
        variant, _side = t2i_facts(self.t2i)
        with self.vision.use() as model:
            weights_id = model.nacosae_weights_id
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
        return EvaluationFacts(keys, self.device)

    def render_many(self, calls: list[tuple[str, int, int]], seed: int) -> list[Any]:
        return self.renderer.render_many(calls, seed)


class ConceptImages:
    """The evaluation's images and activations of concepts: from the concept cache when every
    generation setting matches, else rendered once each in batches, here or on Ray workers."""

    def __init__(self, job: EvaluationJob, models: Any) -> None:
        self.request = job.request
        self.models = models  # EvaluationModels, or a Ray WorkerPool offering the same
        self.counts = {
            "concepts_rendered": 0,
            "images_rendered": 0,
            "cache_hits": 0,
            "vision_forward_passes": 0,
        }

    def activations_of(self, concepts: list[str]) -> dict[str, Any]:
        """[num_img, units] activations per concept."""
        from nacosae.store.concepts import ConceptStore

        n = self.request.num_img
        store = ConceptStore(
            Path(self.request.controls_root).parent / "concepts", self.models.facts().keys
        )
        found: dict[str, Any] = {}
        for concept in concepts:
            cached = store.load_activations(concept, n)
            if cached is not None:
                found[concept] = cached
                self.counts["cache_hits"] += 1
        missing = [c for c in concepts if c not in found]
        if not missing:
            return found
        with progress.progress_bar("concepts") as bar:
            task = bar.add_task("evaluating", total=len(concepts), completed=len(found))
            if isinstance(self.models, EvaluationModels):
                self._here(store, missing, found, lambda: bar.advance(task))
            else:
                self._on_workers(store, missing, found, lambda k: bar.advance(task, k))
        return found

    def _here(self, store: Any, missing: list[str], found: dict, advance: Any) -> None:
        from nacosae.search.components import VISION_BATCH

        for concept in missing:
            images = self._images(store, concept)
            self.counts["vision_forward_passes"] += -(-len(images) // VISION_BATCH)
            found[concept] = self.models.activations(images)
            store.save_activations(concept, found[concept])
            advance()

    def _on_workers(self, store: Any, missing: list[str], found: dict, advance: Any) -> None:
        """Rounds of a few concepts per worker, each saved before the next (so a killed
        evaluation continues from the last round)."""
        from nacosae.search.components import VISION_BATCH

        n, step = self.request.num_img, 4 * len(self.models.slots)
        for start in range(0, len(missing), step):
            chunk = missing[start : start + step]
            have = {c: min(store.image_count(c), n) for c in chunk}
            requests = [(c, have[c], n - have[c]) for c in chunk]
            existing = {c: store.encoded_images(c, have[c]) for c in chunk if have[c]}
            results = self.models.render_concepts(
                requests,
                existing,
                self.request.seed,
                max(1, self.request.t2i_batch),
                one_concept_per_call=True,  # as `_images` renders here
            )
            for concept in chunk:
                pngs, found[concept] = results[concept]
                store.save_encoded(concept, have[concept], pngs)
                store.save_activations(concept, found[concept])
                self.counts["images_rendered"] += len(pngs)
                self.counts["concepts_rendered"] += bool(pngs)
                self.counts["vision_forward_passes"] += -(-n // VISION_BATCH)
            advance(len(chunk))

    def _images(self, store: Any, concept: str) -> list[Any]:
        n, batch = self.request.num_img, max(1, self.request.t2i_batch)
        have = min(store.image_count(concept), n)
        images = store.load_images(concept, have)
        if have < n:
            self.counts["concepts_rendered"] += 1
        while have < n:
            count = min(batch, n - have)
            rendered = self.models.render_many([(concept, have, count)], self.request.seed)
            store.save_images(concept, have, rendered)
            images.extend(rendered)
            have += count
            self.counts["images_rendered"] += count
        return images


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


def _summaries(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from nacosae.evaluation.metrics import summarise

    return {metric: summarise([r[metric] for r in rows]) for metric in ("AUC", "MAD")}


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
