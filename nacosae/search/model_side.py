"""The model steps of a run (render, vision forward, LLM, embedder) in one process.

`LocalModels` builds a run's models through a ModelCache and computes with them. The explain
runner uses it directly; with `--ray` every worker actor holds one per run and the driver
reaches it through `nacosae.distributed.pool.WorkerPool`, which offers the same methods. What
travels between them (`ModelJob`, `ModelFacts`, PNG bytes, arrays) is plain data.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from nacosae.distributed.shipped import Request, ShippedImages
from nacosae.search import components
from nacosae.search.options import ExplainOptions

if TYPE_CHECKING:
    import numpy as np

    from nacosae.models.cache import ModelCache
    from nacosae.store.concepts import ConceptKeys


@dataclass(frozen=True)
class ModelJob:
    """What the model side of a run needs: picklable (the smoke LLM's format constraint is
    rebuilt where the models are, not shipped)."""

    options: ExplainOptions
    versions: components.ModelVersions
    store_dtype: str  # the control store's dtype (the vision model computes in its kind)
    recipe: Any  # models.preprocessing.Preprocessing
    readout: Any  # models.units.Readout

    @property
    def needs_llm(self) -> bool:
        """A local LLM to load on one worker (none behind --llm-url)."""
        return self.options.llm_url is None

    def shippable(self) -> ModelJob:
        return replace(self, options=replace(self.options, llm_constraint=None))

    def build(self, cache: ModelCache, with_llm: bool) -> LocalModels:
        """The job's models where it runs (a Ray worker): device resolved there, the smoke
        preset's LLM constraint rebuilt."""
        from nacosae.controls import resolve_device
        from nacosae.presets import prepare

        options = prepare(self.options, cache)
        device = resolve_device(options.device)
        return LocalModels(replace(self, options=options), cache, device, with_llm)

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
                "versions": [self.versions.t2i, self.versions.llm, self.versions.served_llm],
                "store_dtype": self.store_dtype,
                "recipe": self.recipe.describe(),
                "readout": self.readout.identity(),
            }
        )


@dataclass(frozen=True)
class ModelFacts:
    """What the driver learns from the loaded models: for checks, run.json and the cache keys."""

    weights_id: str
    variant: str
    t2i_batch: int
    keys: ConceptKeys
    models: dict[str, Any]  # run.json `models`
    generation: dict[str, Any]  # run.json `generation` (t2i_batch added by the runner)
    device: str


def chunked(requests: list[Request], batch: int) -> list[list[Request]]:
    """Text-to-image calls of at most `batch` images each (a concept may span two calls)."""
    pending = [(c, first + k) for c, first, count in requests for k in range(count)]
    calls = []
    for start in range(0, len(pending), max(1, batch)):
        grouped: dict[str, list[int]] = {}
        for concept, index in pending[start : start + max(1, batch)]:
            grouped.setdefault(concept, []).append(index)
        calls.append([(c, idx[0], len(idx)) for c, idx in grouped.items()])
    return calls


class LocalModels(ShippedImages):
    """A run's models, built (once, through `cache`) on `device`; `with_llm=False` leaves the
    local LLM unloaded until a chat needs it (a worker that only renders never loads it)."""

    def __init__(
        self, job: ModelJob, cache: ModelCache, device: str, with_llm: bool = True
    ) -> None:
        from nacosae.controls import compute_dtype
        from nacosae.models.text2image import TextToImage

        self.job, self.cache, self.device = job, cache, device
        options = job.options
        self.models = components.build_models(
            options,
            cache,
            device,
            compute_dtype(job.store_dtype, device),
            job.versions,
            load_llm=with_llm,
        )
        self.generation = generation_settings(options)
        self.t2i = TextToImage(self.models.t2i, self.generation)
        self.activations = components.vision_activations(
            self.models.vision, options.layer, job.recipe, job.readout
        )

    def facts(self) -> ModelFacts:
        from dataclasses import asdict

        options = self.job.options
        weights_id = components.weights_id(self.models.vision)
        variant, native_side = components.t2i_facts(self.models.t2i)
        t2i_batch = options.t2i_batch or components.default_t2i_batch(
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
        return ModelFacts(
            weights_id=weights_id,
            variant=variant,
            t2i_batch=t2i_batch,
            keys=keys,
            models=self.models.record(options),
            generation={**asdict(self.generation), "variant": variant},
            device=self.device,
        )

    def load_llm(self) -> None:
        if self.models.llm_spec is not None:
            self.models.llm.model.load()  # type: ignore[attr-defined]

    def render_many(self, calls: list[Request], seed: int) -> list[Any]:
        return self.t2i.render_many(calls, seed)

    def chat_many(self, requests: list[tuple[list[dict[str, str]], int]]) -> list[str]:
        return self.models.llm.chat_many(requests)

    def embed(self, texts: list[str]) -> np.ndarray:
        from nacosae.search.controls import embedding_function

        if self.models.embedder is None:
            raise ValueError("this run has no sentence embedder")
        return embedding_function(self.models.embedder)(texts)


def generation_settings(options: ExplainOptions) -> Any:
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
    models: Any,
    generation: Any,
    variant: str,
    vision_facts: tuple[str, Any, Any],
    device: str,
) -> Any:
    """The concept-cache keys of this run's settings: they hold every setting that changes the
    images (the pipeline's resolved revision and weight variant included) or the activations
    (weights, preprocessing, pooling and SAE)."""
    from nacosae.models.text2image import PROMPT_SCHEME
    from nacosae.search import components
    from nacosae.store.concepts import ConceptKeys

    weights_id, recipe, readout = vision_facts
    return ConceptKeys(
        generation=components.generation_key(
            generation, models.t2i, variant, options.seed, device, prompt_scheme=PROMPT_SCHEME
        ),
        vision=components.vision_key(
            options.model, options.layer, weights_id, models.vision, recipe, readout
        ),
    )
