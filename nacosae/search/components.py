"""The models of an explain run, wired as handles into the cache.

Each component resolves its model's exact version (hub commit or folder content hash), loads it
once through the shared ModelCache and afterwards reaches it only through `with handle.use()`,
inside the step that computes with it (render, vision forward, LLM batch). Nothing here keeps a
model object, so the cache may swap or offload any model between two steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nacosae import progress
from nacosae.errors import NacosaeError
from nacosae.models.cache import GIB, ModelCache, ModelHandle, ModelSpec

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

    from nacosae.models.language import LanguageModel
    from nacosae.models.preprocessing import Preprocessing
    from nacosae.models.text2image import GenerationSettings
    from nacosae.models.units import Readout
    from nacosae.search.options import ExplainOptions

VISION_BATCH = 64  # images per vision forward pass on generated images
T2I_BATCH_LIMIT = 32
CPU_T2I_BATCH = 8
# activation memory per image of a 512 x 512 render in half precision (UNet at 64 x 64 latents,
# VAE decoded one image at a time); scaled by pixel count, doubled with classifier-free guidance
IMAGE_BYTES_512 = 0.35 * GIB


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


def model_dtypes(device: str) -> dict[str, str]:
    """Compute dtypes per model kind: half precision on accelerators, float32 on the CPU."""
    accelerated = device != "cpu"
    return {
        "t2i": "float16" if accelerated else "float32",
        "llm": "bfloat16" if device.startswith("cuda") else "float16" if accelerated else "float32",
    }


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


@dataclass(frozen=True)
class ModelVersions:
    """The exact versions a run loads (found before anything is loaded)."""

    t2i: str
    llm: str | None  # None for an LLM behind --llm-url
    served_llm: str | None = None  # the model name to ask an --llm-url server for


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


def build_models(
    options: ExplainOptions,
    cache: ModelCache,
    device: str,
    vision_dtype: str,
    versions: ModelVersions,
    load_llm: bool = True,
) -> RunModels:
    """Load (once) and describe every model of the run; `load_llm=False` leaves a local LLM to
    load when first used."""
    from nacosae.controls import load_vision, vision_spec
    from nacosae.models.language import HTTPLLM, LocalLLM, load_local_llm
    from nacosae.models.text2image import load_pipeline
    from nacosae.search.controls import load_embedder

    dtypes = model_dtypes(device)
    mode = options.offload
    vision = ModelHandle(
        cache, vision_spec(options.model, options.weights, device, vision_dtype, mode), load_vision
    )
    t2i = ModelHandle(
        cache,
        ModelSpec("t2i", options.t2i_model, versions.t2i, dtypes["t2i"], device, mode),
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
            "llm", options.language_model, versions.llm, dtypes["llm"], device, mode
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
        if load_llm or handle.spec is not llm_spec:
            handle.load()
    plan = cache.plan([h.spec for h in models.handles() if h.spec in cache])
    progress.info("models: " + "; ".join(plan))
    return models


def vision_activations(
    vision: ModelHandle,
    layer: str,
    recipe: Preprocessing,
    readout: Readout,
    batch_size: int = VISION_BATCH,
) -> Callable[[list[Image]], np.ndarray]:
    """Images -> [n, units] activations of every unit of `layer` (with the control store's
    preprocessing and readout), the model taken per call."""
    import numpy as np
    import torch

    from nacosae.models.vision import layer_activations

    transform = recipe.transform()
    dtype = getattr(torch, vision.spec.dtype)

    def activations(images: list[Image]) -> np.ndarray:
        chunks = []
        with vision.use() as model:
            for start in range(0, len(images), batch_size):
                batch = torch.stack(
                    [transform(im.convert("RGB")) for im in images[start : start + batch_size]]
                )
                batch = batch.to(vision.spec.device, dtype=dtype)
                units = layer_activations(model, layer, batch, readout)
                chunks.append(units.float().cpu().numpy())
        return np.concatenate(chunks)

    return activations


def generation_key(
    generation: GenerationSettings,
    t2i: ModelHandle,
    variant: str,
    seed: int,
    device: str,
    **extra: Any,
) -> dict[str, Any]:
    """The concept-cache key part of the images: every setting that changes the pixels,
    including the pipeline's resolved revision and weight variant."""
    from dataclasses import asdict

    return {
        **asdict(generation),
        **extra,
        "revision": t2i.spec.revision,
        "variant": variant,
        "seed": seed,
        "dtype": t2i.spec.dtype,
        "device": device.split(":")[0],
    }


def vision_key(
    model: str,
    layer: str,
    weights_id: str,
    vision: ModelHandle,
    recipe: Preprocessing,
    readout: Readout,
) -> dict[str, Any]:
    """The concept-cache key part of the activations: model, weights, layer, dtype,
    preprocessing and units (pooling, SAE)."""
    return {
        "model": model,
        "weights": weights_id,
        "layer": layer,
        "dtype": vision.spec.dtype,
        "preprocessing": recipe.describe(),
        "units": readout.identity(),
    }


def weights_id(vision: ModelHandle) -> str:
    with vision.use() as model:
        return model.nacosae_weights_id


def t2i_facts(t2i: ModelHandle) -> tuple[str, int]:
    """(weight variant loaded, native image side in pixels) of the text-to-image pipeline."""
    with t2i.use() as pipeline:
        variant = getattr(pipeline, "nacosae_variant", "default")
        side = pipeline.unet.config.sample_size * getattr(pipeline, "vae_scale_factor", 8)
    return variant, int(side)


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
