"""Text-to-image backend (diffusers): the images of many concepts in one batched call.

Image k of a concept is decided by the settings, the seed, the concept and k: its prompt and
its starting noise come from those alone, whatever else shares its call. Its pixels are the same
up to rounding: the kernels a batch size selects (on the CPU as on a GPU) can move a pixel by one
intensity level, so a run keeps one text-to-image batch (recorded in run.json, reused on
resume; only an out-of-memory back-off lowers it). Two schemes each for its prompt and its
starting noise:
- prompts "varied" (default): each image its own camera angle and lighting out of six each,
  drawn from an RNG seeded by (seed, concept, k); "line" (the original project's): "A realstic
  photo of a {concept}" (its words, typo included) plus one of its four camera angles and one of
  its three lightings, drawn once per concept, so all images of a concept share one prompt;
  "line-per-render": the same words, with the framing drawn anew for every render as the
  original did (the search names each render "{concept}, {angle}, {lighting}", search/loop.py);
- noise "hashed" (default): a generator on the device seeded by (seed, concept, k); "index" (the
  original's): a CPU generator seeded k, the same starting noise for every concept.
The evaluation (CoSy's protocol) uses a third of each: prompts "template" (one fixed text with a
`{concept}` field, e.g. "realistic photo of a close up of {concept}") and noise "single" (one CPU
generator seeded by the seed draws the noise of images 0..n-1 in order, as one batched call with
one generator does; drawn whole, so a split into batches gives the same images; the noise an
ancestral scheduler adds at each step comes from a generator per image seeded by (seed, k)).
fp16 on accelerators, float32 on the CPU.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae import hub, progress
from nacosae.models.cache import ModelHandle, ModelSpec
from nacosae.seeds import stable_seed

if TYPE_CHECKING:
    from PIL.Image import Image

    from nacosae.models.backoff import BackOff

CAMERA_ANGLES = (
    "eye-level shot",
    "close-up shot",
    "wide-angle shot",
    "overhead shot",
    "low-angle shot",
    "side view",
)
LIGHTINGS = (
    "natural daylight",
    "soft diffuse light",
    "studio lighting",
    "golden hour light",
    "overcast light",
    "bright sunlight",
)


LINE_PREFIX = "A realstic photo of a"  # the original project's prompt, its typo included
LINE_ANGLES = ("extreme close-up", "wide angle shot", "aerial view", "low angle")
LINE_LIGHTINGS = ("cinematic lighting", "natural sunlight", "studio lighting")
# the search's schemes; the evaluation's is "template"
IMAGE_PROMPTS = ("varied", "line", "line-per-render")
IMAGE_SEEDS = ("hashed", "index")  # the search's; the evaluation's is "single"

PROMPT_SCHEME = "A realistic photo of a {concept}, {camera angle}, {lighting} (v1)"
Request = tuple[str, int, int]  # concept, first image index, images to render


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


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that changes the pixels (with the seed and PROMPT_SCHEME: the cache key).
    `guidance_scale` None leaves guidance to the pipeline's own default."""

    model_id: str
    num_inference_steps: int
    guidance_scale: float | None
    height: int | None = None
    width: int | None = None
    prompts: str = "varied"
    seeds: str = "hashed"
    prompt_template: str | None = None  # with prompts "template"


# the text-to-image pipelines nacosae renders with, and the setting each is made for
PIPELINE_DEFAULTS: dict[str, tuple[int, float]] = {
    "StableDiffusionPipeline": (30, 7.5),
    "StableDiffusionXLPipeline": (30, 5.0),
    "StableDiffusion3Pipeline": (28, 4.5),
    "FluxPipeline": (28, 3.5),
    "PixArtSigmaPipeline": (20, 4.5),
    "SanaPipeline": (20, 4.5),
}
DISTILLED = (4, 0.0)  # turbo, lightning, LCM, schnell: few steps, no guidance
DISTILLED_WORDS = ("turbo", "lightning", "schnell", "lcm", "hyper", "sprint")
FEW_STEP_SCHEDULERS = ("LCMScheduler", "TCDScheduler")


@dataclass(frozen=True)
class GenerationDefaults:
    """The steps and guidance a pipeline is made for, and why these were chosen."""

    steps: int
    guidance: float
    reason: str


def repo_name(model_id: str) -> str:
    """A model's own name: the last part of a hub id or of a folder path (never a parent's)."""
    return Path(model_id.rstrip("/")).name.lower()


def generation_defaults(model_id: str, folder: Path | None) -> GenerationDefaults:
    """The setting a pipeline is made for, from its `model_index.json` (pipeline class and
    scheduler) in `folder`, and the repo's own name; distilled models (turbo, lightning, LCM,
    FLUX.1-schnell) get few steps and no guidance."""
    import json

    name = repo_name(model_id)
    word = next((w for w in DISTILLED_WORDS if w in name), None)
    index_file = folder / "model_index.json" if folder is not None else None
    if index_file is None or not index_file.is_file():
        if word:
            return GenerationDefaults(*DISTILLED, f"'{word}' in the name {name}")
        return GenerationDefaults(30, 7.5, "no model_index.json to read: Stable Diffusion's")
    index = json.loads(index_file.read_text())
    pipeline = str(index.get("_class_name"))
    check_supported(pipeline, model_id)
    scheduler = (index.get("scheduler") or [None, ""])[1] or ""
    spacing = _json_field(folder / "scheduler" / "scheduler_config.json", "timestep_spacing")
    if pipeline == "FluxPipeline":
        if not _json_field(folder / "transformer" / "config.json", "guidance_embeds"):
            return GenerationDefaults(*DISTILLED, "FluxPipeline, no guidance embeddings (schnell)")
    elif scheduler in FEW_STEP_SCHEDULERS:
        return GenerationDefaults(*DISTILLED, f"{pipeline} with a {scheduler}")
    elif spacing == "trailing" and scheduler.startswith("Euler"):
        return GenerationDefaults(
            *DISTILLED, f"{pipeline} with a trailing-spacing {scheduler}: a distilled model"
        )
    if word:
        return GenerationDefaults(*DISTILLED, f"{pipeline}, '{word}' in the name {name}")
    steps, guidance = PIPELINE_DEFAULTS[pipeline]
    return GenerationDefaults(steps, guidance, f"{pipeline} with a {scheduler or 'scheduler'}")


def check_supported(pipeline: str, model_id: str) -> None:
    from nacosae.errors import NacosaeError

    if pipeline not in PIPELINE_DEFAULTS:
        known = ", ".join(p.removesuffix("Pipeline") for p in PIPELINE_DEFAULTS)
        raise NacosaeError(
            f"text-to-image model {model_id} is a {pipeline}: nacosae renders with {known} "
            "pipelines (give another --t2i-model)"
        )


def check_pipeline_folder(model_id: str, folder: Path | None) -> None:
    """A pipeline folder whose model_index.json names a pipeline nacosae does not render with
    is one line, before anything loads."""
    if folder is not None and (folder / "model_index.json").is_file():
        check_supported(str(_json_field(folder / "model_index.json", "_class_name")), model_id)


def _json_field(path: Path, key: str) -> Any:
    import json

    try:
        return json.loads(path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def native_side(pipeline: Any) -> int:
    """The pixel side a pipeline renders by default (its denoiser's sample size in latents
    times the VAE's scale), for UNet and transformer denoisers alike."""
    size = getattr(pipeline, "default_sample_size", None)
    if size is None:
        denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
        size = denoiser.config.sample_size
    return int(size) * int(getattr(pipeline, "vae_scale_factor", 8))


def exact_call_options(pipeline: Any) -> dict[str, Any]:
    """Switches some pipelines take so that they render exactly the prompt and size asked:
    PixArt's and Sana's caption cleaning (which needs BeautifulSoup and rewrites prompts) and
    their aspect-ratio binning (at the native size it changes nothing)."""
    import inspect

    accepted = inspect.signature(type(pipeline).__call__).parameters
    options = {"clean_caption": False, "use_resolution_binning": False}
    return {name: value for name, value in options.items() if name in accepted}


def latent_noise(pipeline: Any, count: int, height: int, width: int, generator: Any) -> Any:
    """`count` images' starting noise in the layout `pipeline(latents=...)` takes, drawn in
    float32 from `generator` (FLUX packs 2 x 2 patches of its 16 latent channels)."""
    import torch

    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    channels = int(denoiser.config.in_channels)
    scale = int(getattr(pipeline, "vae_scale_factor", 8))
    if type(pipeline).__name__.startswith("Flux"):
        channels //= 4
        rows, cols = 2 * (height // (scale * 2)), 2 * (width // (scale * 2))
        noise = torch.randn((count, channels, rows, cols), generator=generator)
        return pipeline._pack_latents(noise, count, channels, rows, cols)
    return torch.randn((count, channels, height // scale, width // scale), generator=generator)


def image_prompt(
    concept: str, seed: int, index: int, scheme: str = "varied", template: str | None = None
) -> str:
    if scheme == "template":
        return (template or "{concept}").format(concept=concept)
    if scheme == "line-per-render":  # the render's name carries its framing
        return f"{LINE_PREFIX} {concept}"
    if scheme == "line":
        rng = random.Random(stable_seed("prompt", seed, concept))  # one draw per concept
        angle, lighting = rng.choice(LINE_ANGLES), rng.choice(LINE_LIGHTINGS)
        return f"{LINE_PREFIX} {concept}, {angle}, {lighting}"
    rng = random.Random(stable_seed("prompt", seed, concept, index))
    return f"A realistic photo of a {concept}, {rng.choice(CAMERA_ANGLES)}, {rng.choice(LIGHTINGS)}"


def image_generator(concept: str, seed: int, index: int, scheme: str, device: str) -> Any:
    """The generator of image `index`'s starting noise (see the module docstring)."""
    import torch

    if scheme == "index":
        return torch.Generator("cpu").manual_seed(index)
    return torch.Generator(device).manual_seed(stable_seed("image", seed, concept, index))


def load_pipeline(spec: ModelSpec) -> Any:
    """ModelCache loader for kind 't2i': a diffusers pipeline from a folder, the HF cache or the
    hub, at the spec's pinned revision.

    The fp16 weight files are preferred whatever the compute dtype (float32 upcasts them): they
    are what `nacosae download models` fetches, so offline loading works on every device. Repos
    without fp16 files load their plain files. `pipeline.nacosae_variant` records which.
    """
    import torch
    from diffusers import AutoPipelineForText2Image

    from nacosae.models.revisions import from_pretrained_kwargs, model_folder

    progress.calm_libraries()
    check_pipeline_folder(spec.id, model_folder(spec.id, spec.revision))
    kwargs = {"dtype": getattr(torch, spec.dtype), **from_pretrained_kwargs(spec.id, spec.revision)}
    if dict(spec.options).get("load") == "direct":  # resident: no copy in host memory first
        kwargs["device_map"] = "cuda" if spec.device in ("cuda", "cuda:0") else spec.device
    last: Exception | None = None
    for variant in ("fp16", None):
        try:
            pipe = AutoPipelineForText2Image.from_pretrained(spec.id, variant=variant, **kwargs)
            break
        except Exception as exc:  # noqa: BLE001 - retried without the variant, then reported
            last = exc
    else:
        raise _load_error(spec.id, last)
    pipe.set_progress_bar_config(disable=True)
    if hasattr(getattr(pipe, "vae", None), "enable_slicing"):
        pipe.vae.enable_slicing()  # decode one image at a time: batch size barely costs memory
    pipe.nacosae_variant = variant or "default"
    return pipe


def _load_error(model_id: str, exc: Exception | None) -> hub.HubError:
    text = str(exc).splitlines()[0] if exc else "unknown error"
    if hub.offline() or "local" in text.lower() or "offline" in text.lower():
        return hub.HubError(
            f"text-to-image model {model_id} is not cached for offline use: run "
            f"`nacosae download models --t2i-model {model_id}` with network access first"
        )
    return hub.HubError(f"cannot load text-to-image model {model_id!r}: {text}")


class TextToImage:
    """Renders concepts with the pipeline of `model`, taken from the cache for each call; calls
    of more images than the back-off's `t2i` size are split (halved on out-of-memory)."""

    def __init__(
        self, model: ModelHandle, settings: GenerationSettings, backoff: BackOff | None = None
    ) -> None:
        from nacosae.models.backoff import BackOff

        self.model = model
        self.settings = settings
        self.device = model.spec.device
        self.backoff = backoff or BackOff({"t2i": 10**6})

    def render(self, concept: str, n: int, seed: int, first: int = 0) -> list[Image]:
        """Images `first .. first+n-1` of `concept` in one batched call."""
        return self.render_many([(concept, first, n)], seed)

    def render_many(self, requests: list[tuple[str, int, int]], seed: int) -> list[Image]:
        """Images of several concepts, (concept, first index, count) each, in request order:
        one batched call, or calls of the back-off's size."""
        return self.backoff.run(
            "t2i", requests, lambda call: self._render_call(call, seed), split=chunked
        )

    def _render_call(self, requests: list[tuple[str, int, int]], seed: int) -> list[Image]:
        import torch

        generator_device = "cpu" if self.device == "mps" else self.device
        settings = self.settings
        prompts, generators = [], []
        for concept, first, n in requests:
            for i in range(first, first + n):
                prompts.append(
                    image_prompt(concept, seed, i, settings.prompts, settings.prompt_template)
                )
                if settings.seeds != "single":
                    generators.append(
                        image_generator(concept, seed, i, settings.seeds, generator_device)
                    )
        if not prompts:
            return []
        extra: dict[str, Any] = {"generator": generators}
        if settings.seeds == "single":
            extra["latents"] = self._single_generator_noise(requests, seed)
            # ancestral schedulers (sd-turbo's) draw noise at every step too: per image, seeded
            # by its index, so an image's noise does not depend on its batch or on earlier calls
            extra["generator"] = [
                torch.Generator(generator_device).manual_seed(stable_seed("step", seed, i))
                for _concept, first, n in requests
                for i in range(first, first + n)
            ]
        if settings.height and settings.width:
            extra.update(height=settings.height, width=settings.width)
        if settings.guidance_scale is not None:
            extra["guidance_scale"] = settings.guidance_scale
        with self.model.use() as pipeline:
            result = pipeline(
                prompt=prompts,
                num_inference_steps=settings.num_inference_steps,
                output_type="pil",
                **extra,
                **exact_call_options(pipeline),
            )
        return list(result.images)

    def _single_generator_noise(self, requests: list[tuple[str, int, int]], seed: int) -> Any:
        """Starting noise of the requested images under the "single" scheme: image k's is row k
        of one draw from a CPU generator seeded `seed` (the same for every concept)."""
        import torch

        last = max(first + n for _concept, first, n in requests)
        generator = torch.Generator("cpu").manual_seed(seed)
        with self.model.use() as pipeline:
            side = native_side(pipeline)
            height, width = self.settings.height or side, self.settings.width or side
            noise = latent_noise(pipeline, last, height, width, generator)
            denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
            dtype = denoiser.dtype
        rows = [noise[first : first + n] for _concept, first, n in requests]
        return torch.cat(rows).to(self.device, dtype=dtype)


def t2i_facts(t2i: ModelHandle) -> tuple[str, int]:
    """(weight variant loaded, native image side in pixels) of the text-to-image pipeline."""
    with t2i.use() as pipeline:
        return getattr(pipeline, "nacosae_variant", "default"), native_side(pipeline)
