"""Explain's models: which exact versions a run loads, how they are built through the model
cache, and the model side that computes with them (render, measure, chat, embed).

`ExplainJob` is picklable: `InProcess(job, cache)` builds its `ExplainSide` in this process, and
with `--ray` every worker actor builds one from the same job (models/sides.py). Each model is
loaded once through the shared ModelCache and afterwards reached only through `with
handle.use()`, inside the step that computes with it, so the cache may swap or offload any model
between two steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae import progress
from nacosae.errors import NacosaeError
from nacosae.models.backoff import BackOff
from nacosae.models.cache import ModelCache, ModelHandle, ModelSpec
from nacosae.models.concept_images import ImageSide, Request
from nacosae.models.memory import CPU_BATCHES, MemoryPlan, Need
from nacosae.search.options import ExplainOptions

if TYPE_CHECKING:
    import numpy as np

    from nacosae.models.language import LanguageModel
    from nacosae.models.preprocessing import Preprocessing
    from nacosae.models.text2image import GenerationDefaults, GenerationSettings
    from nacosae.models.units import Readout
    from nacosae.store.concepts import ConceptKeys

FRUGAL = {"none": "model", "cpu": "model", "model": "sequential"}  # the next offload mode


# ---------------------------------------------------------------- versions


@dataclass(frozen=True)
class ModelVersions:
    """The exact versions a run loads (found before anything is loaded)."""

    t2i: str
    llm: str | None  # None for an LLM behind --llm-url
    served_llm: str | None = None  # the model name to ask an --llm-url server for


def _pinned_revision(model_id: str, pins: dict[str, Any], kind: str, what: str, option: str) -> str:
    """The revision to load: a resumed run's recorded one, else resolved now. A local folder
    whose content changed since the run started cannot be resumed faithfully."""
    from nacosae.models.revisions import is_local, resolve_revision

    recorded = (pins.get(kind) or {}).get("revision")
    if recorded and not is_local(model_id):
        return recorded
    current = resolve_revision(
        model_id, what=what, download_option=f" {option} {model_id}" if option else ""
    )
    if recorded and recorded != current:
        raise NacosaeError(
            f"the {what} folder {model_id} changed since this run started ({recorded[:19]} -> "
            f"{current[:19]}): resuming would mix outputs of two models; start a new run"
        )
    return current


def resolve_models(options: ExplainOptions, pins: dict[str, Any] | None = None) -> ModelVersions:
    """Find every model's exact version and reach the LLM server, without loading anything:
    a wrong id, an uncached model offline or a dead server is an error before any work."""
    from nacosae.models.language import HTTPLLM
    from nacosae.models.revisions import model_folder
    from nacosae.models.text2image import check_pipeline_folder

    pins = pins or {}
    t2i = _pinned_revision(options.t2i_model, pins, "t2i", "text-to-image model", "--t2i-model")
    check_pipeline_folder(options.t2i_model, model_folder(options.t2i_model, t2i))
    if options.llm_url:
        server = HTTPLLM(options.llm_url, options.language_model)
        server.check()
        return ModelVersions(t2i, None, server.name)
    llm = _pinned_revision(
        options.language_model, pins, "llm", "language model", "--language-model"
    )
    return ModelVersions(t2i, llm)


# ---------------------------------------------------------------- the models of a run


@dataclass
class RunModels:
    """Handles of every model a run uses, and what identifies them exactly."""

    vision: ModelHandle
    t2i: ModelHandle
    llm: LanguageModel
    llm_spec: ModelSpec | None  # None for an LLM behind --llm-url
    embedder: ModelHandle | None

    def handles(self) -> list[ModelHandle]:
        found = [self.vision, self.t2i]
        if self.llm_spec is not None:
            found.append(self.llm.model)  # type: ignore[attr-defined]
        if self.embedder is not None:
            found.append(self.embedder)
        return found

    def record(self, options: ExplainOptions) -> dict[str, Any]:
        """For run.json: every model with its resolved revision (what a resume pins)."""
        return {
            "vision": {"id": self.vision.spec.id, "weights": dict(self.vision.spec.options)},
            "t2i": {"id": self.t2i.spec.id, "revision": self.t2i.spec.revision},
            "llm": {
                "id": self.llm.name,
                "revision": self.llm_spec.revision if self.llm_spec else None,
                "url": options.llm_url,
            },
            **(
                {"embedder": {"id": self.embedder.spec.id, "revision": self.embedder.spec.revision}}
                if self.embedder
                else {}
            ),
        }


def build_models(
    options: ExplainOptions,
    cache: ModelCache,
    device: str,
    store_dtype: str,
    versions: ModelVersions,
    plan: MemoryPlan,
    backoff: BackOff,
) -> RunModels:
    """Load (once) and describe every model of the run but a local LLM, which loads when first
    used (on Ray only the lead worker chats, so only it holds the LLM), each placed as `plan`
    says."""
    from nacosae.models.devices import compute_dtype
    from nacosae.models.embedder import load_embedder
    from nacosae.models.language import HTTPLLM, LocalLLM, load_local_llm
    from nacosae.models.text2image import load_pipeline
    from nacosae.models.vision import load_vision, vision_spec

    def placed(kind: str, spec: ModelSpec) -> ModelSpec:
        """`spec` with the plan's offload mode (a resident one loads straight to the device),
        its working memory reserved in the cache."""
        mode = plan.offload(kind, "none") if options.offload == "auto" else options.offload
        found = plan.placement(kind)
        direct = found is not None and found.mode == "resident" and device.startswith("cuda")
        options_ = spec.options + ((("load", "direct"),) if direct else ())
        spec = replace(spec, offload=mode, options=options_)  # type: ignore[arg-type]
        if found is not None:
            cache.set_working(spec, found.computing)
        return spec

    vision = ModelHandle(
        cache,
        placed(
            "vision",
            vision_spec(
                options.model,
                options.weights,
                device,
                compute_dtype("vision", device, store_dtype),
            ),
        ),
        load_vision,
    )
    t2i = ModelHandle(
        cache,
        placed(
            "t2i",
            ModelSpec("t2i", options.t2i_model, versions.t2i, compute_dtype("t2i", device), device),
        ),
        load_pipeline,
    )
    llm_spec = None
    llm: LanguageModel
    if options.llm_url:
        llm = HTTPLLM(
            options.llm_url,
            versions.served_llm or options.language_model,
            max_tokens=options.max_new_tokens,
            concurrency=options.llm_concurrency,
            timeout=options.llm_timeout,
            json_answers=options.answer_format() == "json",
            reasoning_chars=options.reasoning_chars,
            top_k=options.llm_top_k,
        )
    else:
        llm_spec = placed(
            "llm",
            ModelSpec(
                "llm", options.language_model, versions.llm, compute_dtype("llm", device), device
            ),
        )
        llm = LocalLLM(
            ModelHandle(cache, llm_spec, load_local_llm),
            max_new_tokens=options.max_new_tokens,
            constraint=options.llm_constraint,
            json_answers=options.answer_format() == "json",
            backoff=backoff,
            reasoning_chars=options.reasoning_chars,
            top_k=options.llm_top_k,
        )
    embedder = None
    if options.needs_embedder():
        embedder = ModelHandle(cache, ModelSpec("embedder", options.embedder), load_embedder)
    models = RunModels(vision, t2i, llm, llm_spec, embedder)
    for handle in models.handles():
        if handle.spec is not llm_spec:
            handle.load()
    return models


def run_needs(job: ExplainJob, device: str) -> list[Need]:
    """What each model of the run needs on `device` (models/memory.py), from its files: read
    before anything loads. A model whose files are not on this machine is an error naming the
    download (resolve_models found its version, so this is a dry run's remote model)."""
    from nacosae.models import memory
    from nacosae.models.devices import compute_dtype
    from nacosae.models.language import is_gguf_file

    options = job.options
    vision_dtype = compute_dtype("vision", device, job.store_dtype)
    needs = [memory.vision_model_need(options.model, job.recipe.size, vision_dtype)]
    folder = memory.files_of(options.t2i_model, job.versions.t2i, "--t2i-model")
    generation = generation_settings(options, folder)
    guided = generation.guidance_scale is None or generation.guidance_scale > 1.0
    needs.append(
        memory.t2i_need(folder, options.t2i_model, compute_dtype("t2i", device), None, guided)
    )
    if options.llm_url is None:
        dtype = compute_dtype("llm", device)
        if is_gguf_file(options.language_model):
            path = Path(options.language_model).expanduser()
            needs.append(
                memory.gguf_need(path, options.language_model, dtype, options.max_new_tokens)
            )
        else:
            llm_folder = memory.files_of(
                options.language_model, job.versions.llm, "--language-model"
            )
            needs.append(
                memory.llm_folder_need(
                    llm_folder, options.language_model, dtype, options.max_new_tokens
                )
            )
    return needs


def explain_plan(job: ExplainJob, device: str, budget: float) -> MemoryPlan:
    """The run's memory plan on `device` within `budget` bytes (see models/memory.py)."""
    from nacosae.models.memory import plan_memory

    options = job.options
    batches = {"t2i": options.t2i_batch, "llm": options.llm_batch}
    if device == "cpu":  # memory is not the limit: nothing to estimate
        needs = [
            Need("vision", options.model, 0, 0, 0, 0, 0, "images"),
            Need("t2i", options.t2i_model, 0, 0, 0, 0, 0, "images"),
        ]
        if options.llm_url is None:
            needs.append(Need("llm", options.language_model, 0, 0, 0, 0, 0, "rows"))
    else:
        needs = run_needs(job, device)
    return plan_memory(needs, device, budget, options.offload, batches)


# ---------------------------------------------------------------- the job and its side


@dataclass(frozen=True)
class ExplainJob:
    """What the model side of a run needs, picklable (models/sides.py's `Job`)."""

    options: ExplainOptions
    versions: ModelVersions
    store_dtype: str  # the control store's dtype (the vision model computes in its kind)
    recipe: Preprocessing
    readout: Readout

    @property
    def lead_methods(self) -> tuple[str, ...]:
        """A local LLM loads on the lead side only (none behind --llm-url)."""
        return () if self.options.llm_url else ("load_llm",)

    def build(self, cache: ModelCache) -> ExplainSide:
        """The job's models where it runs (on a Ray worker the device is resolved there)."""
        from nacosae.models.devices import resolve_device

        return ExplainSide(self, cache, resolve_device(self.options.device))

    def key(self) -> str:
        """The same for two jobs that load and compute with the same models."""
        import json

        from nacosae.store.concepts import content_key

        record = self.options.record()
        for per_run in ("neurons", "save_dir", "ray", "ray_workers", "n_iters", "seed"):
            record.pop(per_run, None)
        return content_key(
            {
                "options": json.loads(json.dumps(record, default=str)),
                "llm_constraint": self.options.llm_constraint,
                "versions": [self.versions.t2i, self.versions.llm, self.versions.served_llm],
                "store_dtype": self.store_dtype,
                "recipe": self.recipe.describe(),
                "readout": self.readout.identity(),
            }
        )


@dataclass(frozen=True)
class ExplainFacts:
    """What the driver learns from the loaded models: for checks, run.json and the cache keys."""

    weights_id: str
    variant: str
    t2i_batch: int
    keys: ConceptKeys
    models: dict[str, Any]  # run.json `models`
    generation: dict[str, Any]  # run.json `generation` (t2i_batch added by the runner)
    device: str
    memory_plan: dict[str, Any] | None = None  # run.json `memory_plan`


class ExplainSide(ImageSide):
    """A run's models, built (once, through `cache`) on `device` as the memory plan places them;
    the local LLM loads when it is first used or `load_llm` is called. Out-of-memory errors
    lower a batch, or move a model to a more frugal placement (models/backoff.py)."""

    def __init__(self, job: ExplainJob, cache: ModelCache, device: str) -> None:
        from nacosae.models.memory import memory_budget
        from nacosae.models.revisions import model_folder
        from nacosae.models.text2image import TextToImage
        from nacosae.models.vision import vision_activations

        self.job, self.cache, self.device = job, cache, device
        options = job.options
        self.plan = explain_plan(job, device, memory_budget(device, options.gpu_memory))
        cache.set_budget(None if device == "cpu" else self.plan.cache_budget)
        sizes = {kind: self.plan.batch(kind, CPU_BATCHES[kind]) for kind in CPU_BATCHES}
        self.backoff = BackOff(sizes, escalate=self._escalate)
        self.models = build_models(
            options, cache, device, job.store_dtype, job.versions, self.plan, self.backoff
        )
        folder = model_folder(options.t2i_model, job.versions.t2i)
        self.generation = generation_settings(options, folder)
        self.defaults = generation_defaults_of(options, folder)
        self.t2i = TextToImage(self.models.t2i, self.generation, self.backoff)
        self.activations = vision_activations(
            self.models.vision, options.layer, job.recipe, job.readout, self.backoff
        )

    def facts(self) -> ExplainFacts:
        from nacosae.models.text2image import t2i_facts
        from nacosae.models.vision import weights_id_of

        options = self.job.options
        progress.info(self.start_line())
        weights_id = weights_id_of(self.models.vision)
        variant, _native_side = t2i_facts(self.models.t2i)
        keys = concept_keys(
            options,
            self.models,
            self.generation,
            variant,
            (weights_id, self.job.recipe, self.job.readout),
            self.device,
        )
        return ExplainFacts(
            weights_id=weights_id,
            variant=variant,
            t2i_batch=self.backoff.sizes["t2i"],
            keys=keys,
            models=self.models.record(options),
            generation={**asdict(self.generation), "variant": variant},
            device=self.device,
            memory_plan=self.plan.record(),
        )

    def start_line(self) -> str:
        """The plan in one line, with the loaded sizes where the cache knows them, and the
        text-to-image defaults chosen and why."""
        loaded = {s.kind: self.cache.nbytes(s) for s, _ in self.cache.loaded()}
        line = self.plan.line(loaded)
        if self.defaults is not None:
            line += f"; t2i defaults: {self.defaults}"
        return line

    def load_llm(self) -> None:
        """Load the local LLM now (the lead side's start), so that it is in the plan line and a
        tokenizer that cannot write the JSON answer fails before any image is rendered."""
        if self.models.llm_spec is not None:
            self.models.llm.prepare()  # type: ignore[attr-defined]

    def render_many(self, calls: list[Request], seed: int) -> list[Any]:
        return self.t2i.render_many(calls, seed)

    def chat_many(self, requests: list[tuple[list[dict[str, str]], int]]) -> list[str]:
        return self.models.llm.chat_many(requests)

    def embed(self, texts: list[str]) -> np.ndarray:
        from nacosae.models.embedder import embedding_function

        if self.models.embedder is None:
            raise ValueError("this run has no sentence embedder")
        return embedding_function(self.models.embedder)(texts)

    def drain_notes(self) -> list[dict[str, Any]]:
        """Back-offs since the last call (the executor collects them for run.json)."""
        return self.backoff.drain()

    def _escalate(self, kind: str) -> str | None:
        """Move the text-to-image pipeline or the LLM to the next more frugal offload mode
        (model, then sequential); None when there is none (the explained model, the CPU)."""
        if self.device == "cpu" or kind == "vision":
            return None
        handle = self.t2i.model if kind == "t2i" else getattr(self.models.llm, "model", None)
        if handle is None or handle.spec.offload not in FRUGAL:
            return None
        mode = FRUGAL[handle.spec.offload]
        options = tuple(o for o in handle.spec.options if o != ("load", "direct"))
        moved = replace(handle, spec=replace(handle.spec, offload=mode, options=options))
        if kind == "t2i":
            self.t2i.model = self.models.t2i = moved
        else:
            self.models.llm.model = moved  # type: ignore[attr-defined]
            self.models.llm_spec = moved.spec
        return mode


def generation_defaults_of(options: ExplainOptions, folder: Path | None) -> str | None:
    """What the start line says of the steps and guidance a run did not set: their values and
    why (None when both were given)."""
    from nacosae.models.text2image import generation_defaults

    if options.num_inf_steps is not None and options.guidance_scale is not None:
        return None
    found = generation_defaults(options.t2i_model, folder)
    return f"{found.steps} steps, guidance {found.guidance:g} ({found.reason})"


def generation_settings(options: ExplainOptions, folder: Path | None) -> GenerationSettings:
    """The text-to-image settings of a run: steps and guidance as given, else what the pipeline
    in `folder` is made for (its class and scheduler in model_index.json, its own name)."""
    from nacosae.models.text2image import GenerationSettings, generation_defaults

    found: GenerationDefaults = generation_defaults(options.t2i_model, folder)
    guidance: float | None = found.guidance
    if options.guidance_scale == "pipeline":
        guidance = None  # the pipeline's own default, as the original left it
    elif options.guidance_scale is not None:
        guidance = float(options.guidance_scale)
    return GenerationSettings(
        model_id=options.t2i_model,
        num_inference_steps=options.num_inf_steps or found.steps,
        guidance_scale=guidance,
        prompts=options.image_prompts,
        seeds=options.image_seeds,
    )


def concept_keys(
    options: ExplainOptions,
    models: RunModels,
    generation: GenerationSettings,
    variant: str,
    vision_facts: tuple[str, Preprocessing, Readout],
    device: str,
) -> ConceptKeys:
    """The concept-cache keys of this run's settings: they hold every setting that changes the
    images (the pipeline's resolved revision and weight variant included) or the activations
    (weights, preprocessing, pooling and SAE)."""
    from nacosae.models.concept_images import generation_key, vision_key
    from nacosae.models.text2image import PROMPT_SCHEME
    from nacosae.store.concepts import ConceptKeys

    weights_id, recipe, readout = vision_facts
    return ConceptKeys(
        generation=generation_key(
            generation, models.t2i, variant, options.seed, device, prompt_scheme=PROMPT_SCHEME
        ),
        vision=vision_key(options.model, options.layer, weights_id, models.vision, recipe, readout),
    )
