"""The real GPU path, measured: real architectures with random weights, no network.

Builds sd-turbo (SD 2.1 UNet, VAE, OpenCLIP-H text encoder), SDXL base, Llama-3.2-1B and
Llama-3.1-8B from the published configs in `benchmarks/configs/` (random weights, a small local
tokenizer), saves them as model folders (fp16 variant files, as `nacosae download models`
fetches them) and then goes through nacosae's own loaders, ModelCache and search, exactly as
`nacosae explain` does. ResNet-50 and ViT-B/16 come from torchvision with random weights.

Sections, most valuable first (each prints JSON lines, also appended to OUT/gpu.jsonl; the
time budget may end the run before the last ones):
- env: device, memory, library versions.
- memory: one unit, 2 iterations, default options only, with the GPU capped at 16, 24, 12 and
  48 GiB (`torch.cuda.set_per_process_memory_fraction`, and the plan told the same budget), for
  sd-turbo + Llama-3.2-1B and for SDXL base + Llama-3.1-8B: completed or not, the plan chosen,
  back-offs, peak GPU memory, peak host RSS against the largest model's files, seconds.
- pipelines: a transformer denoiser (SD3.5 medium: MMDiT-X, CLIP-L, bigG and T5-XXL) through
  nacosae's loader at its native size: the defaults chosen, images/s at batch 1 and 4.
- layer: 64 units of ResNet-50 `avgpool` in one run (2 iterations): seconds per unit, the share
  of scored concepts that needed no rendering, the whole layer's hours at this rate.
- controls: `nacosae controls` images/s for ResNet-50 and ViT-B/16 on synthetic JPEGs, beside
  the decode-only rate of the same loader (target: within 90% of it).
- explain: one unit with default settings (sd-turbo 4 steps + Llama-3.2-1B, 5 images per
  concept, 10 iterations + summary: 105 images, 11 LLM calls), seconds per phase, peak memory.
- t2i, llm: text-to-image images/s and LLM tokens/s at batch 1, 8 and 32.
- ray: one Ray worker actor (`--ray local --ray-workers 1`, the explain run's models) rendering
  sd-turbo images: images/s and the GPU's utilisation sampled while it renders.
- offload: the same unit with a budget that forces swapping, with `--offload model`, with
  `sequential`, and with `cpu` again after `sequential` in the same process; events must equal
  the first run's (timings aside).
- large: SDXL base + Llama-3.1-8B with `--offload sequential` under a 10 GiB budget (one
  iteration, 2 images per concept, 4 steps, to fit the time), peak memory.

The LLM has random weights and a byte-level BPE tokenizer of its config's vocabulary size built
locally; its replies take the default JSON answer path (held to the schema while decoded);
`llm` measures unconstrained generation speed separately.

    uv run python benchmarks/gpu.py --out results/          # on a CUDA machine, < 8 minutes
    uv run python benchmarks/gpu.py --tiny --device cpu --out /tmp/gpu-tiny   # CI: same code
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).parent / "configs"
CLASS_LABELS = (
    "tench", "goldfish", "great white shark", "hen", "ostrich", "goldfinch", "bald eagle",
    "tree frog", "loggerhead turtle", "garter snake", "trilobite", "scorpion", "tarantula",
    "peacock", "flamingo", "king penguin",
)  # fmt: skip
SECTIONS = (
    "env",
    "memory",
    "pipelines",
    "layer",
    "controls",
    "explain",
    "t2i",
    "llm",
    "ray",
    "offload",
    "large",
)  # fmt: skip  (most valuable first: the time budget may end the run early)


class Bench:
    """Where results go, how much time is left, and the choices that differ in --tiny mode."""

    def __init__(self, out: Path, tiny: bool, device: str, budget_seconds: float) -> None:
        self.out, self.tiny, self.device = out, tiny, device
        self.started = time.perf_counter()
        self.budget_seconds = budget_seconds
        self.results = out / "gpu.jsonl"
        out.mkdir(parents=True, exist_ok=True)

    def emit(self, section: str, **fields: Any) -> None:
        line = json.dumps({"section": section, **fields}, default=str)
        print(line, flush=True)
        with self.results.open("a") as handle:
            handle.write(line + "\n")

    def seconds_left(self) -> float:
        return self.budget_seconds - (time.perf_counter() - self.started)

    @property
    def half(self) -> str:
        return "float32" if self.device == "cpu" else "float16"


# ---------------------------------------------------------------- models from configs


def _read(path: Path) -> dict[str, Any]:
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


@contextmanager
def _built_on(device: str, dtype: str = "float32") -> Iterator[None]:
    """Create parameters directly on `device` in `dtype` (random init of billions of weights is
    fast there and slow on a CPU; an 8B model in float32 would need 32 GB)."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_pipeline_folder(config: str, folder: Path, device: str) -> Path:
    """A diffusers pipeline with random weights from `benchmarks/configs/<config>` (UNet or
    transformer denoiser, CLIP and T5 text encoders), built in half precision and saved with
    fp16 variant files."""
    import diffusers
    import torch
    import transformers
    from transformers import CLIPTokenizer, T5TokenizerFast

    from nacosae.models.tiny import tiny_sentencepiece_tokenizer, write_tiny_clip_tokenizer

    if (folder / "model_index.json").is_file():
        return folder
    source = CONFIGS / config
    layout = json.loads((source / "pipeline.json").read_text())
    clip = CLIPTokenizer.from_pretrained(
        str(write_tiny_clip_tokenizer(folder.parent / f"{config}-tokenizer")), model_max_length=77
    )
    tokenizers = layout["tokenizers"]
    if isinstance(tokenizers, list):  # UNet pipelines: CLIP tokenizers only
        tokenizers = {name: "clip" for name in tokenizers}
    denoiser = layout.get("denoiser", "UNet2DConditionModel")
    denoiser_part = "unet" if denoiser == "UNet2DConditionModel" else "transformer"
    with _built_on(device, "float32" if device == "cpu" else "float16"):
        parts: dict[str, Any] = {
            denoiser_part: getattr(diffusers, denoiser).from_config(
                _read(source / f"{denoiser_part}.json")
            ),
            "vae": diffusers.AutoencoderKL.from_config(_read(source / "vae.json")),
        }
        for name, cls in layout["text_encoders"].items():
            values = _read(source / f"{name}.json")
            if cls == "T5EncoderModel":
                text_config: Any = transformers.T5Config(**values)
            else:
                text_config = transformers.CLIPTextConfig(**values)
            parts[name] = getattr(transformers, cls)(text_config)
    scheduler_cls = getattr(diffusers, layout["scheduler"])
    parts["scheduler"] = scheduler_cls.from_config(_read(source / "scheduler.json"))
    specials = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    for name, kind in tokenizers.items():
        parts[name] = (
            clip if kind == "clip" else tiny_sentencepiece_tokenizer(T5TokenizerFast, specials)
        )
    if layout["pipeline"] == "StableDiffusionPipeline":
        parts.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline = getattr(diffusers, layout["pipeline"])(**parts)
    pipeline.to(torch.float16)
    staging = folder.with_name(folder.name + ".tmp")
    pipeline.save_pretrained(staging, variant="fp16")
    staging.replace(folder)
    del pipeline, parts
    _free(device)
    return folder


def build_llm_folder(config: str, folder: Path, device: str) -> Path:
    """A Llama with random weights from a published config and a byte-level BPE tokenizer of
    the config's vocabulary size (Llama 3's 128,256 tokens; it writes JSON, so the default
    answer path is measured), built and saved in bfloat16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from nacosae.models.tiny import byte_level_bpe_tokenizer

    if (folder / "config.json").is_file():
        return folder
    values = _read(CONFIGS / config)
    tokenizer = byte_level_bpe_tokenizer(
        values["vocab_size"], specials=min(256, values["vocab_size"] // 8)
    )
    values.update(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with _built_on(device, "float32" if device == "cpu" else "bfloat16"):
        model = LlamaForCausalLM(LlamaConfig(**values))
    model.to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    staging = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(folder)
    del model
    _free(device)
    return folder


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    import torch

    if not device.startswith("cuda"):
        return None
    return round(torch.cuda.max_memory_allocated() / 1024**3, 2)


# ---------------------------------------------------------------- sections


def section_env(bench: Bench, state: dict[str, Any]) -> None:
    import diffusers
    import torch
    import transformers

    fields: dict[str, Any] = {
        "device": bench.device,
        "tiny": bench.tiny,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
    }
    if bench.device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()
        fields.update(
            gpu=torch.cuda.get_device_name(),
            gpu_total_gib=round(total / 1024**3, 1),
            gpu_free_gib=round(free / 1024**3, 1),
        )
    bench.emit("env", **fields)


def make_jpegs(root: Path, per_class: int, size: tuple[int, int]) -> Path:
    """Photo-sized synthetic JPEGs in one folder per class, with a classes.json of labels."""
    import numpy as np
    from PIL import Image

    if (root / "classes.json").is_file():
        return root
    rng = np.random.default_rng(0)
    width, height = size
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    entries = []
    for c, label in enumerate(CLASS_LABELS):
        folder = root / f"c{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        entries.append({"index": c, "wnid": None, "folder": folder.name, "label": label})
        for k in range(per_class):
            shifted = np.roll(base, shift=(c * per_class + k) * 7, axis=1)
            Image.fromarray(shifted).save(folder / f"{k:04d}.JPEG", quality=90)
    (root / "classes.json").write_text(json.dumps(entries))
    return root


def decode_rate(images: Path, batch_size: int, workers: int) -> float:
    """Images/s of the controls loader alone (decode, resize, crop; no model)."""
    from torch.utils.data import DataLoader

    from nacosae.data.images import ControlImages, list_image_folder
    from nacosae.models.preprocessing import DEFAULT

    listing = list_image_folder(images)
    loader = DataLoader(
        ControlImages(listing, list(range(len(listing))), DEFAULT.transform(), DEFAULT.size),
        batch_size=batch_size,
        num_workers=workers,
        prefetch_factor=4 if workers else None,
    )
    started = time.perf_counter()
    count = sum(len(positions) for _images, positions, _ok in loader)
    return count / (time.perf_counter() - started)


def section_controls(bench: Bench, state: dict[str, Any]) -> None:
    from nacosae.controls import ControlsRequest, build_controls, default_workers

    per_class = 2 if bench.tiny else 128
    images = make_jpegs(bench.out / "jpegs", per_class, (500, 375))
    state["images"] = images
    workers = 0 if bench.tiny else default_workers()
    batch = 16 if bench.tiny else 128
    decode = decode_rate(images, batch, workers)
    models = ("tiny_cnn", "tiny_vit") if bench.tiny else ("resnet50", "vit_b_16")
    layers = {"tiny_cnn": "avgpool", "resnet50": "avgpool", "tiny_vit": "encoder"}
    for model in models:
        request = ControlsRequest(
            model=model,
            layer=layers.get(model, "encoder"),
            images=images,
            controls_root=bench.out / "controls",
            weights="none",
            batch_size=batch,
            workers=workers,
            device=bench.device,
            dtype="float16",
            overwrite=True,
        )
        started = time.perf_counter()
        result = build_controls(request, state["cache"])
        rate = result.images_processed / (time.perf_counter() - started)
        bench.emit(
            "controls",
            model=model,
            images=result.images_processed,
            images_per_s=round(rate, 1),
            decode_only_images_per_s=round(decode, 1),
            ratio_to_decode=round(rate / decode, 3),
            target_ratio=0.9,
            batch_size=batch,
            workers=workers,
        )


def explain_options(bench: Bench, state: dict[str, Any], name: str, **changes: Any) -> Any:
    """Options of one explain variant; each variant gets its own concept cache (so it renders
    everything) over the one control store."""
    from nacosae.search.options import ExplainOptions

    home = bench.out / "variants" / name
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / "controls").symlink_to((bench.out / "controls").resolve(), target_is_directory=True)
    options = ExplainOptions(
        neurons=["0"],
        save_dir=home / "runs",
        controls_root=home / "controls",
        model="tiny_cnn" if bench.tiny else "resnet50",
        layer="avgpool",
        weights="none",
        t2i_model=str(changes.pop("t2i_model", None) or state["sd_turbo"]),
        language_model=str(changes.pop("language_model", None) or state["llm_small"]),
        num_inf_steps=2 if bench.tiny else None,
        num_img=2 if bench.tiny else 5,
        n_iters=1 if bench.tiny else 10,
        device=bench.device,
        max_new_tokens=192,  # room for a JSON answer (random weights: the schema ends it)
    )
    for key, value in changes.items():
        setattr(options, key, value)
    return options


def run_variant(
    bench: Bench, state: dict[str, Any], name: str, cache: Any = None, **changes: Any
) -> dict:
    from nacosae.search.runner import run_explain
    from nacosae.store.runs import read_events

    cache = cache or state["cache"]
    options = explain_options(bench, state, name, **changes)
    _peak_reset(bench.device)
    stats = cache.stats
    loads_before, load_seconds_before = stats.loads, stats.load_seconds
    started = time.perf_counter()
    result = run_explain(options, cache)
    wall = time.perf_counter() - started
    load_seconds = stats.load_seconds - load_seconds_before
    record = json.loads((result.run_dir / "run.json").read_text())
    events = [
        {k: v for k, v in e.items() if k != "scoring_seconds"} for e in read_events(result.run_dir)
    ]
    totals = record["totals"]
    return {
        "variant": name,
        "offload": options.offload,
        "gpu_memory_gib": options.gpu_memory,
        "wall_s": round(wall, 2),
        "load_s": round(load_seconds, 2),
        "search_s": round(wall - load_seconds, 2),  # what swapping and offloading change
        "seconds": totals["seconds"],
        "images_rendered": totals["images_rendered"],
        "llm_calls": totals["llm_calls"],
        "t2i_batch": record["generation"]["t2i_batch"],
        "memory_plan": record.get("memory_plan"),
        "backoffs": record.get("backoffs", []),
        "model_loads": stats.loads - loads_before,
        "evictions_total": record["model_cache"]["evictions"],
        "peak_gpu_gib": _peak_gib(bench.device),
        "events": events,
    }


def build_pair(bench: Bench, pipeline: str, llm: str, llm_folder: str) -> tuple[Path, Path]:
    """A text-to-image folder and an LLM folder, built once (tiny configs with --tiny)."""
    if bench.tiny:
        pipeline, llm = "tiny-sd", "tiny-llama.json"
    started = time.perf_counter()
    models = bench.out / "models"
    t2i = build_pipeline_folder(pipeline, models / pipeline, bench.device)
    language = build_llm_folder(llm, models / llm_folder, bench.device)
    bench.emit("build", models=[pipeline, llm], seconds=round(time.perf_counter() - started, 1))
    return t2i, language


def section_explain(bench: Bench, state: dict[str, Any]) -> None:
    state["sd_turbo"], state["llm_small"] = build_pair(
        bench, "sd-turbo", "llama-3.2-1b-instruct.json", "llm-small"
    )
    first = run_variant(bench, state, "default")
    state["reference"] = dict(first)
    events = first.pop("events")
    bench.emit(
        "explain",
        **first,
        concepts=len(events),
        concepts_scored=sum(e.get("score") is not None for e in events),
        best=max((e["score"] for e in events if e.get("score") is not None), default=None),
        target_search_s=None if bench.tiny else 30,
    )


def section_t2i(bench: Bench, state: dict[str, Any]) -> None:
    from nacosae.models.cache import ModelHandle, ModelSpec
    from nacosae.models.revisions import resolve_revision
    from nacosae.models.text2image import GenerationSettings, TextToImage, load_pipeline

    folder = str(state["sd_turbo"])
    spec = ModelSpec("t2i", folder, resolve_revision(folder), bench.half, bench.device, "none")
    t2i = TextToImage(
        ModelHandle(state["cache"], spec, load_pipeline), GenerationSettings(folder, 4, 0.0)
    )
    t2i.render("warm up", 1, seed=0)
    for batch in (1, 8, 32):
        _peak_reset(bench.device)
        started = time.perf_counter()
        t2i.render_many([(f"concept {k}", 0, 1) for k in range(batch)], seed=1)
        seconds = time.perf_counter() - started
        bench.emit(
            "t2i",
            model="sd-turbo" if not bench.tiny else "tiny-sd",
            steps=4,
            batch=batch,
            images_per_s=round(batch / seconds, 2),
            seconds=round(seconds, 3),
            peak_gpu_gib=_peak_gib(bench.device),
        )


LLM_CONFIGS = {  # name -> (config, folder); the tiny run measures the tiny config only
    "Llama-3.2-1B": ("llama-3.2-1b-instruct.json", "llm-small"),
    "Llama-3.1-8B": ("llama-3.1-8b-instruct.json", "llm-large"),
}


def section_llm(bench: Bench, state: dict[str, Any]) -> None:
    """Decoding speed of the local LLM at batch 1/8/32, with the JSON answer grammar
    (models/structured.py, its budget guard included) and without: rows x generated tokens per
    second (random weights: the grammar, not the model, ends the reasoning), and the ratio
    (target: constrained within 1.15x of unconstrained)."""
    from nacosae.models.cache import ModelHandle, ModelSpec
    from nacosae.models.language import load_local_llm
    from nacosae.models.revisions import resolve_revision

    configs = {"tiny-llama": ("tiny-llama.json", "llm-small")} if bench.tiny else LLM_CONFIGS
    new_tokens = 16 if bench.tiny else 128
    for name, (config, folder_name) in configs.items():
        if bench.seconds_left() < (10 if bench.tiny else 90):
            bench.emit("llm", model=name, skipped="out of time")
            continue
        folder = str(build_llm_folder(config, bench.out / "models" / folder_name, bench.device))
        dtype = "float32" if bench.device == "cpu" else "bfloat16"
        spec = ModelSpec("llm", folder, resolve_revision(folder), dtype, bench.device, "none")
        with ModelHandle(state["cache"], spec, load_local_llm).use() as bundle:
            grammar = bundle.answer_grammar()
            for batch in (1, 8, 32):
                plain = _decode_rate(bench, bundle, batch, new_tokens, None)
                constrained = _decode_rate(bench, bundle, batch, new_tokens, grammar)
                bench.emit(
                    "llm",
                    model=name,
                    batch=batch,
                    new_tokens=new_tokens,
                    tokens_per_s=plain,
                    constrained_tokens_per_s=constrained,
                    slowdown=round(plain / constrained, 3),
                    target_slowdown=1.15,
                    peak_gpu_gib=_peak_gib(bench.device),
                )
        _free(bench.device)


def _decode_rate(bench: Bench, bundle: Any, batch: int, new_tokens: int, grammar: Any) -> float:
    """Rows x generated tokens per second of one greedy `generate` call."""
    import torch
    from transformers import LogitsProcessorList

    tokenizer = bundle.tokenizer
    chat = [{"role": "user", "content": "the unit likes red round apple; answer in JSON"}]
    text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    inputs = tokenizer([text] * batch, return_tensors="pt", add_special_tokens=False)
    inputs = inputs.to(bench.device)
    prompt = inputs["input_ids"].shape[1]
    extra: dict[str, Any] = {"min_new_tokens": new_tokens}  # unconstrained: every step runs
    if grammar is not None:  # the grammar ends rows itself (and needs the end token allowed)
        extra = {"logits_processor": LogitsProcessorList([grammar.processor(prompt, new_tokens)])}
    _peak_reset(bench.device)
    started = time.perf_counter()
    with torch.inference_mode():
        output = bundle.model.generate(
            **inputs,
            **extra,
            do_sample=False,
            max_new_tokens=new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=bundle.stop_ids(),
        )
    if bench.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    steps = output.shape[1] - prompt  # generate runs until the last row ends
    return round(batch * steps / seconds, 1)


@contextmanager
def _sampled(read: Callable[[], int], every: float) -> Iterator[list[int]]:
    """`read()` sampled every `every` seconds on a thread while the block runs (one sample at
    the start)."""
    import threading

    samples, stop = [read()], threading.Event()

    def sample() -> None:
        while not stop.wait(every):
            samples.append(read())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()


@contextmanager
def _utilisation_samples(device: str, every: float = 0.1) -> Iterator[list[int]]:
    """The GPU's utilisation (percent, NVML through torch, else nvidia-smi) sampled every
    `every` seconds while the block runs; nothing on a CPU."""
    import subprocess

    import torch

    if not device.startswith("cuda"):
        yield []
        return

    def read() -> int:
        try:
            return int(torch.cuda.utilization())
        except Exception:  # noqa: BLE001 - no pynvml: ask nvidia-smi
            query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            return int(subprocess.run(query, capture_output=True, text=True).stdout.split()[0])

    with _sampled(read, every) as samples:
        yield samples


def section_ray(bench: Bench, state: dict[str, Any]) -> None:
    """One worker actor renders concepts scheduled by the driver, as `explain --ray` does."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        bench.emit("ray", skipped="Ray is not installed (uv sync --extra ray)")
        return
    from nacosae.distributed.cluster import connect
    from nacosae.distributed.pool import WorkerPool
    from nacosae.models.concept_images import FillSettings, fill_concept_cache
    from nacosae.search.model_side import ExplainJob
    from nacosae.search.runner import check_inputs
    from nacosae.store.concepts import ConceptCache

    options = explain_options(bench, state, "ray")
    inputs = check_inputs(options)
    store_dtype = inputs.store.index["dtype"]
    job = ExplainJob(options, inputs.versions, store_dtype, inputs.recipe, inputs.readout)
    started = time.perf_counter()
    pool = WorkerPool.start(connect("local"), job, workers=1)
    try:
        facts = pool.facts()
        ready = time.perf_counter() - started
        per_concept = options.num_img
        cache = ConceptCache(bench.out / "variants" / "ray" / "concepts", facts.keys)
        warm = FillSettings(per_concept, 0, facts.t2i_batch)
        fill_concept_cache(cache, pool, ["warm up"], warm)
        concepts = 4 if bench.tiny else 24
        names = [f"concept {k}" for k in range(concepts)]
        with _utilisation_samples(bench.device) as samples:
            started = time.perf_counter()
            fill_concept_cache(cache, pool, names, FillSettings(per_concept, 1, facts.t2i_batch))
            seconds = time.perf_counter() - started
        stats = pool.stats()
    finally:
        pool.close()
    bench.emit(
        "ray",
        model="sd-turbo" if not bench.tiny else "tiny-sd",
        workers=1,
        worker_ready_s=round(ready, 1),
        t2i_batch=facts.t2i_batch,
        images=concepts * per_concept,
        images_per_s=round(concepts * per_concept / seconds, 2),
        seconds=round(seconds, 2),
        gpu_utilisation_mean=round(sum(samples) / len(samples), 1) if samples else None,
        gpu_utilisation_samples=len(samples),
        tasks=stats["tasks"],
        schedule_ms_per_concept=round(1000 * stats["schedule_seconds"] / (concepts + 1), 2),
    )


def _compare(bench: Bench, reference: dict, result: dict, **extra: Any) -> None:
    events = result.pop("events")
    same = events == reference["events"]
    first_difference = None
    if not same:
        for k, (a, b) in enumerate(zip(events, reference["events"], strict=False)):
            if a != b:
                first_difference = {"index": k, "this": a.get("concept"), "ref": b.get("concept")}
                break
    bench.emit(
        "offload",
        **result,
        events_equal_reference=same,
        first_difference=first_difference,
        search_ratio_to_reference=round(result["search_s"] / reference["search_s"], 3),
        **extra,
    )


def section_offload(bench: Bench, state: dict[str, Any]) -> None:
    from nacosae.models.cache import GIB

    reference = state["reference"]
    cache = state["cache"]
    sizes = [n for label, n in cache.stats.models.items() if label.startswith(("t2i", "llm"))]
    squeeze = max(sizes) / GIB + 1.5  # the largest model and its work, not two models
    swapped = run_variant(bench, state, "swapped", offload="cpu", gpu_memory=squeeze)
    _compare(bench, reference, swapped, target_search_ratio=1.5)
    for mode in ("model", "sequential"):
        _compare(bench, reference, run_variant(bench, state, mode, offload=mode))
    again = run_variant(bench, state, "cpu-after-sequential", offload="cpu")
    _compare(bench, reference, again)


def section_large(bench: Bench, state: dict[str, Any]) -> None:
    state["sdxl"], state["llm_large"] = build_pair(
        bench, "sdxl-base", "llama-3.1-8b-instruct.json", "llm-large"
    )
    result = run_variant(
        bench,
        state,
        "large-sequential",
        t2i_model=str(state["sdxl"]),
        language_model=str(state["llm_large"]),
        offload="sequential",
        gpu_memory=10.0,
        n_iters=1,
        num_img=2,
        num_inf_steps=4,
    )
    events = result.pop("events")
    bench.emit(
        "large",
        **result,
        models=[Path(state["sdxl"]).name, Path(state["llm_large"]).name],
        concepts=len(events),
        completed=True,
        under_10_gib=None if result["peak_gpu_gib"] is None else result["peak_gpu_gib"] < 10,
    )


@contextmanager
def _capped(device: str, gib: float) -> Iterator[None]:
    """The GPU capped at `gib` GiB for this process (PyTorch's allocator refuses more), as a
    card of that size would be; nothing on a CPU."""
    import torch

    if not device.startswith("cuda"):
        yield
        return
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 1024**3 / total))
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


@contextmanager
def _rss_samples(every: float = 0.2) -> Iterator[list[int]]:
    """This process's resident memory (bytes) sampled every `every` seconds while the block
    runs: its peak is what loading the models cost in host memory."""
    import psutil

    process = psutil.Process()
    with _sampled(lambda: process.memory_info().rss, every) as samples:
        yield samples


def ensure_store(bench: Bench, state: dict[str, Any]) -> None:
    """The explained model's control store over the synthetic JPEGs (built by `controls`, or
    here when a section runs without it)."""
    from nacosae.controls import ControlsRequest, build_controls

    model = "tiny_cnn" if bench.tiny else "resnet50"
    if (bench.out / "controls" / model / "avgpool" / "index.json").is_file():
        return
    images = state.get("images") or make_jpegs(
        bench.out / "jpegs", 2 if bench.tiny else 16, (500, 375)
    )
    state["images"] = images
    request = ControlsRequest(
        model=model, layer="avgpool", images=images, controls_root=bench.out / "controls",
        weights="none", batch_size=64, workers=0, device=bench.device, dtype="float16",
    )  # fmt: skip
    build_controls(request, state["cache"])


MEMORY_CAPS = (16, 24, 12, 48)  # GiB: the cards researchers have, most valuable first
MEMORY_SETTINGS = {  # name -> (pipeline config, LLM config, LLM folder)
    "default": ("sd-turbo", "llama-3.2-1b-instruct.json", "llm-small"),
    "recommended": ("sdxl-base", "llama-3.1-8b-instruct.json", "llm-large"),
}


def section_memory(bench: Bench, state: dict[str, Any]) -> None:
    """One unit, 2 iterations, default options only, on a GPU capped at 12-48 GiB with the
    plan told the same budget: does it complete, which plan, peak GPU and host memory,
    back-offs, seconds. The 16 and 24 GiB caps first; the rest while time is left."""
    from nacosae.models.cache import ModelCache

    ensure_store(bench, state)
    folders = {
        name: build_pair(bench, t2i, llm, folder)
        for name, (t2i, llm, folder) in MEMORY_SETTINGS.items()
    }
    largest = max(
        sum(p.stat().st_size for p in Path(f).rglob("*.safetensors"))
        for pair in folders.values()
        for f in pair
    )
    for gib in MEMORY_CAPS if not bench.tiny else MEMORY_CAPS[:1]:
        for name, (t2i, llm) in folders.items():
            if bench.seconds_left() < (30 if bench.tiny else 90):
                bench.emit("memory", gpu_gib=gib, setting=name, skipped="out of time")
                continue
            _free(bench.device)
            started, error, result = time.perf_counter(), None, {}
            with _capped(bench.device, gib), _rss_samples() as rss:
                try:
                    result = run_variant(
                        bench, state, f"memory-{name}-{gib}", cache=ModelCache(),
                        t2i_model=str(t2i), language_model=str(llm), n_iters=2,
                        num_inf_steps=2 if bench.tiny else 4, num_img=2 if bench.tiny else 5,
                        gpu_memory=None if bench.device == "cpu" else float(gib),
                    )  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - a failed setting is a result here
                    error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            placements = (result.get("memory_plan") or {}).get("placements", [])
            bench.emit(
                "memory",
                gpu_gib=gib,
                setting=name,
                models=[Path(t2i).name, Path(llm).name],
                completed=error is None,
                **({"error": error} if error else {}),
                plan={p["kind"]: [p["mode"], p["batch"]] for p in placements},
                backoffs=result.get("backoffs", []),
                peak_gpu_gib=result.get("peak_gpu_gib"),
                peak_rss_gib=round(max(rss) / 1024**3, 2),
                rss_to_largest_model=round(max(rss) / largest, 2),
                seconds=round(time.perf_counter() - started, 1),
            )
            _free(bench.device)


def section_pipelines(bench: Bench, state: dict[str, Any]) -> None:
    """A transformer-denoiser pipeline (SD3.5 medium: MMDiT-X with CLIP-L, bigG and T5-XXL;
    random weights) through nacosae's loader at its native size: defaults chosen, images/s."""
    from nacosae.models.cache import ModelHandle, ModelSpec
    from nacosae.models.revisions import model_folder, resolve_revision
    from nacosae.models.text2image import (
        GenerationSettings,
        TextToImage,
        generation_defaults,
        load_pipeline,
        native_side,
    )

    if bench.tiny:
        from nacosae.models.tiny import tiny_transformer_pipeline

        folder = bench.out / "models" / "tiny-sd3"
        if not (folder / "model_index.json").is_file():
            tiny_transformer_pipeline("sd3", bench.out / "models" / "work").save_pretrained(folder)
    else:
        folder = build_pipeline_folder(
            "sd3.5-medium", bench.out / "models" / "sd3.5-medium", bench.device
        )
    revision = resolve_revision(str(folder))
    defaults = generation_defaults(str(folder), model_folder(str(folder), revision))
    spec = ModelSpec("t2i", str(folder), revision, bench.half, bench.device, "none")
    handle = ModelHandle(state["cache"], spec, load_pipeline)
    started = time.perf_counter()
    handle.load()
    load_seconds = time.perf_counter() - started
    with handle.use() as pipeline:
        side = native_side(pipeline)
    steps = 2 if bench.tiny else 8
    t2i = TextToImage(handle, GenerationSettings(str(folder), steps, defaults.guidance))
    t2i.render("warm up", 1, seed=0)
    for batch in (1, 4):
        _peak_reset(bench.device)
        started = time.perf_counter()
        images = t2i.render_many([(f"concept {k}", 0, 1) for k in range(batch)], seed=1)
        seconds = time.perf_counter() - started
        bench.emit(
            "pipelines",
            pipeline=type(pipeline).__name__,
            model=folder.name,
            native_side=side,
            image_size=list(images[0].size),
            defaults=[defaults.steps, defaults.guidance, defaults.reason],
            steps=steps,
            batch=batch,
            images_per_s=round(batch / seconds, 3),
            load_s=round(load_seconds, 1),
            peak_gpu_gib=_peak_gib(bench.device),
        )
    state["cache"].clear()
    _free(bench.device)


def section_layer(bench: Bench, state: dict[str, Any]) -> None:
    """64 units of ResNet-50 `avgpool` in one run at default settings (sd-turbo + Llama-3.2-1B,
    2 iterations to fit the time): seconds per unit amortised and the share of concepts the
    concept cache served, to extrapolate the whole layer (2,048 units; goal: one H100-hour)."""
    ensure_store(bench, state)
    pair = state.get("sd_turbo"), state.get("llm_small")
    if None in pair:
        pair = build_pair(bench, "sd-turbo", "llama-3.2-1b-instruct.json", "llm-small")
    units = 4 if bench.tiny else 64
    result = run_variant(
        bench, state, "layer", t2i_model=str(pair[0]), language_model=str(pair[1]),
        neurons=[f"0:{units}"], n_iters=2, num_img=2 if bench.tiny else 5,
        num_inf_steps=2 if bench.tiny else None,
    )  # fmt: skip
    events = [e for e in result.pop("events") if e.get("score") is not None]
    per_concept = 2 if bench.tiny else 5
    rendered = result["images_rendered"] // per_concept
    per_unit = result["wall_s"] / units
    bench.emit(
        "layer",
        units=units,
        n_iters=2,
        wall_s=result["wall_s"],
        seconds_per_unit=round(per_unit, 2),
        concepts_scored=len(events),
        concepts_rendered=rendered,
        served_without_rendering=round(1 - rendered / len(events), 3) if events else None,
        layer_2048_hours_at_this_rate=round(per_unit * 2048 / 3600, 2),
        seconds=result["seconds"],
    )


RUNNERS: dict[str, Callable[[Bench, dict[str, Any]], None]] = {
    "env": section_env,
    "memory": section_memory,
    "pipelines": section_pipelines,
    "layer": section_layer,
    "controls": section_controls,
    "explain": section_explain,
    "t2i": section_t2i,
    "llm": section_llm,
    "ray": section_ray,
    "offload": section_offload,
    "large": section_large,
}
NEEDS = {
    "explain": "controls",
    "t2i": "explain",
    "llm": "explain",
    "ray": "explain",
    "offload": "explain",
}
MIN_SECONDS = {"offload": 120, "large": 150, "layer": 90, "pipelines": 60}  # else skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for results and models")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (CI, any device)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--budget-seconds", type=float, default=450.0)
    args = parser.parse_args(argv)

    from nacosae import progress
    from nacosae.models.cache import ModelCache

    progress.configure(quiet=True)
    progress.quiet_libraries()
    bench = Bench(args.out, args.tiny, args.device, args.budget_seconds)
    state: dict[str, Any] = {"cache": ModelCache()}
    wanted = args.only or list(SECTIONS)
    failed: set[str] = set()
    for name in SECTIONS:
        if name not in wanted:
            continue
        if NEEDS.get(name) in failed:
            bench.emit(name, skipped=f"needs section {NEEDS[name]}, which failed")
            failed.add(name)
            continue
        if bench.seconds_left() < MIN_SECONDS.get(name, 0):
            bench.emit(name, skipped=f"{bench.seconds_left():.0f} s left of the budget")
            continue
        started = time.perf_counter()
        try:
            RUNNERS[name](bench, state)
        except Exception as exc:  # noqa: BLE001 - report and go on with the other sections
            failed.add(name)
            bench.emit(name, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            traceback.print_exc(file=sys.stderr)
        bench.emit("timing", of=name, seconds=round(time.perf_counter() - started, 1))
    bench.emit("done", failed=sorted(failed), seconds=round(time.perf_counter() - bench.started))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
