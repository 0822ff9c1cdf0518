"""Explain's models: which exact versions a run loads, how they are built through the model
cache, and the model side that computes with them (render, measure, chat, embed).

`ExplainJob` is picklable: `InProcess(job, cache)` builds its `ExplainSide` in this process, and
with `--ray` every worker actor builds one from the same job (models/sides.py). Each model is
loaded once through the shared ModelCache and afterwards reached only through `with
handle.use()`, inside the step that computes with it, so the cache may swap or offload any model
between two steps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from nacosae import progress
from nacosae.errors import NacosaeError
from nacosae.models.cache import GIB, ModelCache, ModelHandle, ModelSpec
from nacosae.models.concept_images import ImageSide, Request
from nacosae.search.options import ExplainOptions

if TYPE_CHECKING:
    import numpy as np

    from nacosae.models.language import LanguageModel
    from nacosae.models.preprocessing import Preprocessing
    from nacosae.models.text2image import GenerationSettings
    from nacosae.models.units import Readout
    from nacosae.store.concepts import ConceptKeys

T2I_BATCH_LIMIT = 32
CPU_T2I_BATCH = 8
# activation memory per image of a 512 x 512 render in half precision (UNet at 64 x 64 latents,
# VAE decoded one image at a time); scaled by pixel count, doubled with classifier-free guidance
IMAGE_BYTES_512 = 0.35 * GIB


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

    pins = pins or {}
    t2i = _pinned_revision(options.t2i_model, pins, "t2i", "text-to-image model", "--t2i-model")
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
) -> RunModels:
    """Load (once) and describe every model of the run but a local LLM, which loads when first
    used (on Ray only the lead worker chats, so only it holds the LLM)."""
    from nacosae.models.devices import compute_dtype
    from nacosae.models.embedder import load_embedder
    from nacosae.models.language import HTTPLLM, LocalLLM, load_local_llm
    from nacosae.models.text2image import load_pipeline
    from nacosae.models.vision import load_vision, vision_spec

    mode = options.offload
    vision = ModelHandle(
        cache,
        vision_spec(
            options.model,
            options.weights,
            device,
            compute_dtype("vision", device, store_dtype),
            mode,  # type: ignore[arg-type]
        ),
        load_vision,
    )
    t2i = ModelHandle(
        cache,
        ModelSpec(
            "t2i",
            options.t2i_model,
            versions.t2i,
            compute_dtype("t2i", device),
            device,
            mode,  # type: ignore[arg-type]
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
            json_answers=options.answer_format() == "json",
        )
    else:
        llm_spec = ModelSpec(
            "llm",
            options.language_model,
            versions.llm,
            compute_dtype("llm", device),
            device,
            mode,  # type: ignore[arg-type]
        )
        llm = LocalLLM(
            ModelHandle(cache, llm_spec, load_local_llm),
            max_new_tokens=options.max_new_tokens,
            constraint=options.llm_constraint,
            json_answers=options.answer_format() == "json",
        )
    embedder = None
    if options.control_strategy == "dissimilar-class":
        embedder = ModelHandle(cache, ModelSpec("embedder", options.embedder), load_embedder)
    models = RunModels(vision, t2i, llm, llm_spec, embedder)
    for handle in models.handles():
        if handle.spec is not llm_spec:
            handle.load()
    return models


def default_t2i_batch(
    models: RunModels,
    cache: ModelCache,
    generation: GenerationSettings,
    native_side: int,
    device: str,
) -> int:
    """Images per text-to-image call that fit the device beside the models resident there."""
    if not device.startswith("cuda"):
        return CPU_T2I_BATCH
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    room = min(free, cache.budget(device))
    resident = [h.spec for h in models.handles() if h.spec.residency in ("none", "cpu")]
    if models.t2i.spec.residency in ("none", "cpu"):
        room -= cache.nbytes(models.t2i.spec)
    if all(s.residency == "none" for s in resident):
        room -= sum(cache.nbytes(s) for s in resident if s != models.t2i.spec)
    pixels = (generation.height or native_side) * (generation.width or native_side)
    per_image = IMAGE_BYTES_512 * pixels / 512**2
    if generation.guidance_scale is None or generation.guidance_scale > 1.0:  # None: 7.5 or 5
        per_image *= 2
    return max(1, min(T2I_BATCH_LIMIT, int(room // per_image)))


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


class ExplainSide(ImageSide):
    """A run's models, built (once, through `cache`) on `device`; the local LLM loads when it
    is first used or `load_llm` is called."""

    def __init__(self, job: ExplainJob, cache: ModelCache, device: str) -> None:
        from nacosae.models.text2image import TextToImage
        from nacosae.models.vision import vision_activations

        self.job, self.cache, self.device = job, cache, device
        options = job.options
        self.models = build_models(options, cache, device, job.store_dtype, job.versions)
        self.generation = generation_settings(options)
        self.t2i = TextToImage(self.models.t2i, self.generation)
        self.activations = vision_activations(
            self.models.vision, options.layer, job.recipe, job.readout
        )

    def facts(self) -> ExplainFacts:
        from nacosae.models.text2image import t2i_facts
        from nacosae.models.vision import weights_id_of

        options = self.job.options
        plan = self.cache.plan([h.spec for h in self.models.handles() if h.spec in self.cache])
        progress.info("models: " + "; ".join(plan))
        weights_id = weights_id_of(self.models.vision)
        variant, native_side = t2i_facts(self.models.t2i)
        t2i_batch = options.t2i_batch or default_t2i_batch(
            self.models, self.cache, self.generation, native_side, self.device
        )
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
            t2i_batch=t2i_batch,
            keys=keys,
            models=self.models.record(options),
            generation={**asdict(self.generation), "variant": variant},
            device=self.device,
        )

    def load_llm(self) -> None:
        """Load the local LLM now (the lead side's start), so that it is in the plan line."""
        if self.models.llm_spec is not None:
            self.models.llm.model.load()  # type: ignore[attr-defined]

    def render_many(self, calls: list[Request], seed: int) -> list[Any]:
        try:
            return self.t2i.render_many(calls, seed)
        except Exception as exc:
            if type(exc).__name__ != "OutOfMemoryError":
                raise
            n_images = sum(count for _, _, count in calls)
            raise NacosaeError(
                f"out of GPU memory rendering {n_images} images in one call: use --t2i-batch "
                f"{max(1, n_images // 2)}, --offload model or sequential, or a --gpu-memory "
                "budget below the free memory"
            ) from exc

    def chat_many(self, requests: list[tuple[list[dict[str, str]], int]]) -> list[str]:
        return self.models.llm.chat_many(requests)

    def embed(self, texts: list[str]) -> np.ndarray:
        from nacosae.models.embedder import embedding_function

        if self.models.embedder is None:
            raise ValueError("this run has no sentence embedder")
        return embedding_function(self.models.embedder)(texts)


def generation_settings(options: ExplainOptions) -> GenerationSettings:
    """The text-to-image settings of a run (steps and guidance per model unless given)."""
    from nacosae.models.text2image import GenerationSettings, default_generation

    steps, guidance = default_generation(options.t2i_model)
    if options.guidance_scale == "pipeline":
        guidance = None  # the pipeline's own default, as the original left it
    elif options.guidance_scale is not None:
        guidance = float(options.guidance_scale)
    return GenerationSettings(
        model_id=options.t2i_model,
        num_inference_steps=options.num_inf_steps or steps,
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
