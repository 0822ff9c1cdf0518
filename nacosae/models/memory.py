"""The memory plan: what each model of a run needs on the accelerator, and where it lives.

Made before the first model loads, from the models' files (safetensors headers, or configs alone
with the weights counted on PyTorch's `meta` device), so that `explain --dry-run` can answer
"will this fit a 16 GiB card?" on a machine without one. Each model needs its weights and its
working memory at the run's settings:

- text-to-image: a batch of images at the pipeline's native resolution, twice with
  classifier-free guidance, plus the VAE decoding one image at a time (slicing);
- LLM: per row of a `generate` batch, its KV cache for the prompt and every new token, the
  logits and the sampler's sort of them, and the prefill's activations;
- explained model: per image, a forward pass at its input size.

Only one model computes at a time, so the device must hold the resident weights plus the working
memory of the model that computes. The plan takes, per model, the first placement that fits at a
batch of at least one: resident (everything stays), swapped (whole models move to CPU memory by
LRU when the one that computes needs the room), model offload (a pipeline's components move to
the device one at a time while they compute) and sequential offload (weights stream in layer by
layer), and within it the largest batch up to the model's limit. An explicit `--offload` or batch
option wins over the plan. The figures are estimates (README: "Memory"); an out-of-memory error
still halves the batch and retries (models/backoff.py).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nacosae.progress import human_bytes

GIB = 1024**3
MIB = 1024**2
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "F32": 4, "F16": 2, "BF16": 2, "F64": 8}
MODES = ("resident", "swapped", "model", "sequential")
OFFLOAD_OF_MODE = {
    "resident": "cpu",
    "swapped": "cpu",
    "model": "model",
    "sequential": "sequential",
}
MODE_OF_OFFLOAD = {
    "none": "resident",
    "cpu": "swapped",
    "model": "model",
    "sequential": "sequential",
}
BATCH_LIMITS = {"t2i": 32, "llm": 16, "vision": 64}
CPU_BATCHES = {"t2i": 8, "llm": 16, "vision": 64}  # on the CPU memory is not the limit
PREFERRED_T2I_BATCH = 8  # below this, swapping the other models out buys a larger batch
HEADROOM = 0.08  # of the budget, kept free: CUDA's allocator fragments, kernels need workspace

# working-memory estimates (half precision; see the module docstring)
UNET_IMAGE_512 = 0.30 * GIB  # a UNet's activations for one 512 x 512 image
VAE_DECODE_1024 = 1.5 * GIB  # decoding one 1024 x 1024 image (scaled by pixels)
TRANSFORMER_ACTIVATIONS = 24  # live values per token and hidden unit in a DiT block
PROMPT_TOKENS = 1500  # the chain-of-thought templates with a scored history of ten concepts
VISION_IMAGE_224 = 25 * MIB  # an explained model's forward pass for one 224 px image, float32


@dataclass(frozen=True)
class Need:
    """One model's bytes on the accelerator: its weights, what must be there at once under
    model offload (its largest component) and sequential offload (its largest layer), and its
    working memory: `fixed` for any batch plus `per_item` per image or row."""

    kind: str  # vision, t2i or llm
    model: str
    weights: int
    largest_part: int
    largest_layer: int
    fixed: int
    per_item: int
    unit: str  # what a batch counts: images or rows
    detail: str = ""  # what the estimate is based on

    def working(self, batch: int) -> int:
        return self.fixed + batch * self.per_item

    def batch_in(self, room: float) -> int:
        """The largest batch whose working memory fits `room` (0: not even one)."""
        if room <= self.fixed:
            return 0
        return int(min(BATCH_LIMITS[self.kind], (room - self.fixed) // max(1, self.per_item)))

    def on_device(self, mode: str) -> int:
        """Weight bytes on the device while it computes under placement `mode`."""
        if mode == "model":
            return self.largest_part
        if mode == "sequential":
            return self.largest_layer
        return self.weights


@dataclass(frozen=True)
class Placement:
    kind: str
    model: str
    mode: str  # resident, swapped, model or sequential
    batch: int
    weights: int
    working: int
    fits: bool
    unit: str
    chosen_by: str  # "plan" or the option that set it
    streamed: int = 0  # weight bytes on the device while it computes under model/sequential

    @property
    def offload(self) -> str:
        """The ModelCache offload mode that realises this placement."""
        return OFFLOAD_OF_MODE[self.mode]

    @property
    def computing(self) -> int:
        """What the ModelCache must leave free beside the placed weights while this model
        computes (`ModelCache.set_working`)."""
        return self.working + self.streamed


@dataclass
class MemoryPlan:
    """Where every model of a run lives and in what batches (see the module docstring)."""

    device: str
    budget: float  # bytes the run may use on the device (inf on the CPU)
    placements: list[Placement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def placement(self, kind: str) -> Placement | None:
        return next((p for p in self.placements if p.kind == kind), None)

    def batch(self, kind: str, default: int) -> int:
        found = self.placement(kind)
        return found.batch if found else default

    def offload(self, kind: str, default: str) -> str:
        found = self.placement(kind)
        return found.offload if found else default

    @property
    def cache_budget(self) -> float:
        """The ModelCache's budget: the plan's less its headroom (each model's working memory
        is reserved apart, `Placement.computing`)."""
        return self.budget if math.isinf(self.budget) else self.budget * (1 - HEADROOM)

    def line(self, loaded: dict[str, int] | None = None) -> str:
        """The run's start line: one phrase per model (`loaded`: the weight bytes of models
        already loaded, by kind, in place of the estimates)."""
        where = "no limit" if math.isinf(self.budget) else f"{human_bytes(self.budget)} budget"
        parts = []
        for p in self.placements:
            size = human_bytes((loaded or {}).get(p.kind, p.weights))
            work = f" + {human_bytes(p.working)} working" if p.working else ""
            warn = " (does not fit: expect out-of-memory back-offs)" if not p.fits else ""
            parts.append(
                f"{p.kind} {Path(p.model).name or p.model} {size}{work} {p.mode}, batch {p.batch} "
                f"{p.unit}{warn}"
            )
        return f"memory plan ({self.device}, {where}): " + "; ".join(parts)

    def record(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "budget_bytes": None if math.isinf(self.budget) else int(self.budget),
            "placements": [asdict(p) for p in self.placements],
            "notes": list(self.notes),
        }


def plan_memory(
    needs: list[Need],
    device: str,
    budget: float,
    offload: str = "auto",
    batches: dict[str, int | None] | None = None,
) -> MemoryPlan:
    """The placement and batch of every model (see the module docstring). `offload` other than
    `auto` and the `batches` given (not None) are the user's and win."""
    batches = {k: v for k, v in (batches or {}).items() if v is not None}
    plan = MemoryPlan(device, budget if device != "cpu" else math.inf)
    if device == "cpu":
        mode = MODE_OF_OFFLOAD.get(offload, "resident")
        for need in needs:
            chosen = "option" if need.kind in batches else "plan"
            batch = batches.get(need.kind, CPU_BATCHES[need.kind])
            plan.placements.append(
                Placement(
                    need.kind, need.model, mode, batch, need.weights, 0, True, need.unit, chosen
                )  # fmt: skip
            )
        return plan
    usable = budget * (1 - HEADROOM)
    vision = next((n for n in needs if n.kind == "vision"), None)
    if offload != "auto":
        mode = MODE_OF_OFFLOAD[offload]
        plan.placements = [_placed(n, mode, usable, needs, vision, batches) for n in needs]
        return plan
    resident = [_placed(n, "resident", usable, needs, vision, batches) for n in needs]
    swapped = [_swapped(n, usable, needs, vision, batches) for n in needs]
    if all(p.fits for p in resident) and all(
        r.batch >= min(PREFERRED_BATCHES[r.kind], s.batch)
        for r, s in zip(resident, swapped, strict=True)
    ):
        plan.placements = resident
    else:
        plan.placements = swapped
        plan.notes.append("the models do not all fit at once: they take turns on the device")
    return plan


PREFERRED_BATCHES = {"t2i": PREFERRED_T2I_BATCH, "llm": BATCH_LIMITS["llm"], "vision": 16}


def _room(need: Need, mode: str, budget: float, needs: list[Need], vision: Need | None) -> float:
    """Bytes left for `need`'s working memory while it computes under `mode`: resident keeps
    every model's weights on the device; otherwise only the explained model's stay (it is small
    and used in every phase) beside what `need` itself holds at once."""
    if mode == "resident":
        return budget - sum(n.weights for n in needs)
    others = vision.weights if vision is not None and need is not vision else 0
    return budget - others - need.on_device(mode)


def _placed(
    need: Need,
    mode: str,
    budget: float,
    needs: list[Need],
    vision: Need | None,
    batches: dict[str, int],
) -> Placement:
    room = _room(need, mode, budget, needs, vision)
    fitting = need.batch_in(room)
    batch = batches.get(need.kind, max(1, fitting))
    chosen = "plan"
    if need.kind in batches:
        chosen = "--" + {"t2i": "t2i-batch", "llm": "llm-batch"}.get(need.kind, "batch")
    fits = need.working(batch) <= room
    streamed = need.on_device(mode) if mode in ("model", "sequential") else 0
    return Placement(need.kind, need.model, mode, batch, need.weights, need.working(batch), fits,
                     need.unit, chosen, streamed)  # fmt: skip


def _swapped(
    need: Need, budget: float, needs: list[Need], vision: Need | None, batches: dict[str, int]
) -> Placement:
    """Taking turns: the first of swapped, model offload (a pipeline's components one at a
    time) and sequential offload that fits a batch of one (the explained model stays)."""
    if need is vision:
        return _placed(need, "resident", budget, [need], vision, batches)
    candidates = [_placed(need, "swapped", budget, needs, vision, batches)]
    if need.largest_part < need.weights:
        candidates.append(_placed(need, "model", budget, needs, vision, batches))
    candidates.append(_placed(need, "sequential", budget, needs, vision, batches))
    return next((p for p in candidates if p.fits), candidates[-1])


# ---------------------------------------------------------------- what a model weighs


def safetensors_sizes(path: Path) -> tuple[int, int, int]:
    """(total bytes, largest tensor bytes, widest element bytes) of a safetensors file, read
    from its header alone."""
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    entries = [entry for name, entry in header.items() if name != "__metadata__"]
    sizes = [math.prod(e["shape"]) * DTYPE_BYTES.get(e["dtype"], 2) for e in entries]
    widths = [DTYPE_BYTES.get(e["dtype"], 2) for e in entries]
    return sum(sizes), max(sizes, default=0), max(widths, default=2)


def weight_files(folder: Path) -> list[Path]:
    """The weight files a loader reads from `folder`: the fp16 variant when there is one (the
    loaders prefer it), else the plain safetensors files."""
    files = sorted(folder.glob("*.safetensors"))
    fp16 = [p for p in files if ".fp16." in p.name]
    return fp16 or [p for p in files if p.name.count(".") == 1 or "-of-" in p.name]


def folder_weights(folder: Path, dtype: str) -> tuple[int, int] | None:
    """(bytes, largest tensor bytes) of a model folder's weights at compute `dtype`, from its
    safetensors headers; None without weight files."""
    files = weight_files(folder)
    if not files:
        return None
    total = largest = stored = 0
    for path in files:
        size, big, width = safetensors_sizes(path)
        total, largest, stored = total + size, max(largest, big), max(stored, width)
    scale = DTYPE_BYTES[dtype] / max(1, stored)
    return int(total * scale), int(largest * scale)


def meta_weights(build: Any, dtype: str) -> tuple[int, int]:
    """(bytes, largest tensor bytes) of a module built by `build()` on PyTorch's `meta` device
    (no memory is allocated): for a folder that holds only configs."""
    import torch

    with torch.device("meta"):
        module = build()
    counts = [t.numel() for t in (*module.parameters(), *module.buffers())]
    width = DTYPE_BYTES[dtype]
    return sum(counts) * width, max(counts, default=0) * width


def _diffusers_component(
    folder: Path, library: str, class_name: str, dtype: str
) -> tuple[int, int]:
    sizes = folder_weights(folder, dtype)
    if sizes is not None:
        return sizes
    config = json.loads((folder / "config.json").read_text())
    if library == "diffusers":
        import diffusers

        cls = getattr(diffusers, class_name)
        return meta_weights(lambda: cls.from_config(config), dtype)
    import transformers

    cls = getattr(transformers, class_name)
    config_object = transformers.AutoConfig.from_pretrained(str(folder))
    return meta_weights(lambda: cls(config_object), dtype)


# ---------------------------------------------------------------- text-to-image


@dataclass(frozen=True)
class PipelineFacts:
    """What a pipeline folder's files say, before it loads."""

    class_name: str
    denoiser: str  # unet or transformer
    native_side: int
    latent_scale: int
    guidance_doubles: bool  # classifier-free guidance runs the denoiser twice per step
    component_bytes: dict[str, int]
    largest_tensor: int
    hidden: int  # a transformer's width (0 for UNets)
    patch: int


def pipeline_facts(folder: Path, dtype: str) -> PipelineFacts:
    """Read a diffusers pipeline folder: its class, denoiser, native resolution and weights."""
    index = json.loads((folder / "model_index.json").read_text())
    components = {
        name: spec
        for name, spec in index.items()
        if not name.startswith("_") and isinstance(spec, list) and spec[0] and spec[1]
    }
    sizes: dict[str, int] = {}
    largest = 0
    for name, (library, class_name) in components.items():
        sub = folder / name
        if not (sub / "config.json").is_file():
            continue  # tokenizers, schedulers, feature extractors
        size, big = _diffusers_component(sub, library, class_name, dtype)
        sizes[name], largest = size, max(largest, big)
    denoiser = "unet" if "unet" in components else "transformer"
    config = json.loads((folder / denoiser / "config.json").read_text())
    scale = _latent_scale(folder)
    patch = int(config.get("patch_size") or 1)
    if index["_class_name"].startswith("Flux"):
        sample = 128  # FluxPipeline's default_sample_size; its transformer has no sample_size
    else:
        sample = int(config.get("sample_size") or 64)
    return PipelineFacts(
        class_name=index["_class_name"],
        denoiser=denoiser,
        native_side=sample * scale,
        latent_scale=scale,
        guidance_doubles=not index["_class_name"].startswith("Flux"),
        component_bytes=sizes,
        largest_tensor=largest,
        hidden=int(config.get("num_attention_heads", 0) * config.get("attention_head_dim", 0))
        if denoiser == "transformer"
        else 0,
        patch=patch,
    )


def _latent_scale(folder: Path) -> int:
    """Pixels per latent side: 2 ** (VAE blocks - 1) for SD-style VAEs, DC-AE's own ratio."""
    config = json.loads((folder / "vae" / "config.json").read_text())
    if "encoder_block_out_channels" in config:  # AutoencoderDC (Sana): 2 ** (blocks - 1)
        return 2 ** (len(config["encoder_block_out_channels"]) - 1)
    return 2 ** (len(config.get("block_out_channels", [0, 0, 0, 0])) - 1)


def t2i_need(
    folder: Path,
    model: str,
    dtype: str,
    side: int | None,
    guided: bool,
) -> Need:
    """A pipeline's weights and its working memory per image at `side` pixels (native when
    None), twice with classifier-free guidance (`guided`)."""
    facts = pipeline_facts(folder, dtype)
    side = side or facts.native_side
    pixels = side * side
    if facts.denoiser == "unet":
        per_image = UNET_IMAGE_512 * pixels / 512**2
    else:
        tokens = (side / facts.latent_scale / facts.patch) ** 2
        per_image = tokens * max(facts.hidden, 1024) * 2 * TRANSFORMER_ACTIVATIONS
    if guided and facts.guidance_doubles:
        per_image *= 2
    weights = sum(facts.component_bytes.values())
    return Need(
        kind="t2i",
        model=model,
        weights=weights,
        largest_part=max(facts.component_bytes.values(), default=weights),
        largest_layer=facts.largest_tensor,
        fixed=int(VAE_DECODE_1024 * pixels / 1024**2),
        per_item=int(per_image),
        unit="images",
        detail=f"{facts.class_name}, {side} px, {'with' if guided else 'no'} guidance",
    )


# ---------------------------------------------------------------- language model


def llm_need(config: dict[str, Any], model: str, dtype: str, new_tokens: int,
             weights: tuple[int, int] | None = None) -> Need:  # fmt: skip
    """A causal LM's weights (from its files when given, else counted from its config) and per
    row of a batch: the KV cache of the prompt and `new_tokens`, the logits and their sort, and
    the prefill's activations."""
    width = DTYPE_BYTES[dtype]
    layers = int(config["num_hidden_layers"])
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    inner = int(config.get("intermediate_size") or 4 * hidden)
    vocab = int(config["vocab_size"])
    if weights is None:
        per_layer = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
        per_layer += 3 * hidden * inner + 2 * hidden
        embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
        weights = ((layers * per_layer + embeddings + hidden) * width, vocab * hidden * width)
    kv_per_token = 2 * layers * kv_heads * head_dim * width
    tokens = PROMPT_TOKENS + new_tokens
    per_row = (
        kv_per_token * tokens + 3 * vocab * 4 + PROMPT_TOKENS * (2 * inner + 4 * hidden) * width
    )
    return Need(
        kind="llm",
        model=model,
        weights=weights[0],
        largest_part=weights[0],
        largest_layer=weights[1],
        fixed=0,
        per_item=int(per_row),
        unit="rows",
        detail=f"{layers} layers, KV {human_bytes(kv_per_token)}/token x {tokens} tokens",
    )


def llm_folder_need(folder: Path, model: str, dtype: str, new_tokens: int) -> Need:
    config = json.loads((folder / "config.json").read_text())
    return llm_need(config, model, dtype, new_tokens, folder_weights(folder, dtype))


def gguf_need(path: Path, model: str, dtype: str, new_tokens: int) -> Need:
    """A GGUF file: transformers dequantises it to `dtype`, about four times a 4-bit file."""
    weights = int(path.stat().st_size * 4 * DTYPE_BYTES[dtype] / 2)
    return Need("llm", model, weights, weights, weights // 8, 0, 256 * MIB, "rows",
                "GGUF file, dequantised")  # fmt: skip


# ---------------------------------------------------------------- explained model


def vision_model_need(model: str, side: int, dtype: str) -> Need:
    """The explained model's weights, counted on the `meta` device (nothing is allocated)."""
    from nacosae.models.vision import load_vision_model

    try:
        weights, largest = meta_weights(lambda: load_vision_model(model, "none")[0], dtype)
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta: count it as small
        weights, largest = 100 * MIB, 10 * MIB
    return vision_need(weights, largest, model, side, dtype)


def files_of(model_id: str, revision: str | None, option: str) -> Path:
    """A model's folder on this machine, or an error naming the download that brings it."""
    from nacosae.errors import NacosaeError
    from nacosae.models.revisions import model_folder

    folder = model_folder(model_id, revision)
    if folder is None:
        raise NacosaeError(
            f"the files of {model_id} are not on this machine: run `nacosae download models "
            f"{option} {model_id}` first"
        )
    return folder


def vision_need(weights: int, largest: int, model: str, side: int, dtype: str) -> Need:
    per_image = VISION_IMAGE_224 * (side / 224) ** 2 * DTYPE_BYTES[dtype] / 4
    return Need("vision", model, weights, weights, largest, 0, int(per_image), "images",
                f"{side} px input")  # fmt: skip


def memory_budget(device: str, gpu_memory_gib: float | None) -> float:
    """The bytes a run may use on `device`: `--gpu-memory` GiB, else free memory less a margin."""
    if device == "cpu":
        return math.inf
    if gpu_memory_gib is not None:
        return gpu_memory_gib * GIB
    from nacosae.models.cache import default_budget

    return default_budget(device)
