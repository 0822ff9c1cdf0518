"""`explain`: resolve the options, load every component once, run the search per neuron and
keep the run directory truthful (running, done, failed or interrupted) whatever happens."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nacosae import __version__, progress
from nacosae.errors import NacosaeError
from nacosae.models.cache import ModelCache, ModelSpec
from nacosae.models.downloads import DEFAULT_EMBEDDER, DEFAULT_LANGUAGE_MODEL, DEFAULT_T2I_MODEL
from nacosae.search.controls import STRATEGIES
from nacosae.search.scoring import METRICS
from nacosae.store.runs import RunWriter, make_run_id

OFFLOAD_MODES = ("none", "cpu", "sequential")


@dataclass
class ExplainOptions:
    """Everything `nacosae explain` can be told (defaults follow the original project)."""

    neurons: list[str]  # selections: "12", "0:100", "1,5,9", "random:50" (resolved at run time)
    save_dir: Path
    controls_root: Path
    model: str = "resnet18"
    layer: str = "avgpool"
    weights: str = "default"
    language_model: str = DEFAULT_LANGUAGE_MODEL
    llm_url: str | None = None
    t2i_model: str = DEFAULT_T2I_MODEL
    num_img: int = 5
    num_inf_steps: int | None = None
    guidance_scale: float | None = None
    n_iters: int = 10
    metric: str = "auc"
    prompt: str = "main"
    summary_prompt: str = "summary"
    control_strategy: str = "full"
    embedder: str = DEFAULT_EMBEDDER
    offload: str = "cpu"
    save_images: bool = True
    seed: int = 42
    device: str = "auto"
    preset: str | None = None
    max_new_tokens: int = 384
    llm_constraint: Any = field(default=None, repr=False)  # set by the smoke preset

    def validate(self) -> None:
        if not self.neurons:
            raise NacosaeError("no neuron given: pass --neuron-id, --neurons or --neurons-file")
        if self.metric not in METRICS:
            raise NacosaeError(f"unknown --metric {self.metric!r}: use {', '.join(METRICS)}")
        if self.control_strategy not in STRATEGIES:
            raise NacosaeError(
                f"unknown --control-strategy {self.control_strategy!r}: use {', '.join(STRATEGIES)}"
            )
        if self.offload not in OFFLOAD_MODES:
            raise NacosaeError(f"unknown --offload {self.offload!r}: use none, cpu or sequential")
        if self.num_img < 2:
            raise NacosaeError("--num-img must be at least 2 (scores compare image sets)")
        if self.n_iters < 0:
            raise NacosaeError("--n-iters cannot be negative")

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("llm_constraint")
        data["save_dir"], data["controls_root"] = str(self.save_dir), str(self.controls_root)
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ExplainOptions:
        known = {f for f in cls.__dataclass_fields__ if f != "llm_constraint"}
        values = {k: v for k, v in data.items() if k in known}
        values["save_dir"], values["controls_root"] = (
            Path(values["save_dir"]),
            Path(values["controls_root"]),
        )
        return cls(**values)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"nacosae": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "diffusers", "transformers", "sentence-transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


@dataclass
class ExplainResult:
    run_dir: Path
    summary: dict[str, Any]


def run_explain(
    options: ExplainOptions | None, cache: ModelCache, resume: Path | None = None
) -> ExplainResult:
    """Run (or, with `resume`, continue) the search; the run directory records the outcome."""
    recorded: list[dict[str, Any]] = []
    if resume is not None:
        writer, options, recorded = _reopen(resume)
    elif options is None:
        raise ValueError("run_explain needs options or a run directory to resume")
    else:
        options.validate()
        if options.preset == "smoke":
            from nacosae.presets import smoke_options

            options = smoke_options(options)
        run_id = make_run_id(options.model, options.layer, options.neurons)
        writer = RunWriter.create(
            options.save_dir,
            run_id,
            {
                "config": options.record(),
                "versions": _versions(),
                "seed": options.seed,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    cache.offload = options.offload  # type: ignore[assignment]
    started = time.perf_counter()
    try:
        summary = _run(options, cache, writer, recorded)
    except KeyboardInterrupt:
        writer.update(status="interrupted", seconds=round(time.perf_counter() - started, 3))
        raise
    except NacosaeError as err:
        writer.update(
            status="failed", error=str(err), seconds=round(time.perf_counter() - started, 3)
        )
        raise
    except Exception as err:
        if type(err).__name__ == "OutOfMemoryError":
            message = (
                "out of GPU memory: use --offload cpu (or sequential), fewer --num-img, or a "
                "smaller model"
            )
            writer.update(status="failed", error=message)
            raise NacosaeError(message) from err
        writer.update(status="failed", error=f"{type(err).__name__}: {err}")
        raise
    writer.update(
        status="done",
        seconds=round(time.perf_counter() - started, 3),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        model_cache=cache.stats.as_dict(),
    )
    return ExplainResult(writer.directory, summary)


def _reopen(directory: Path) -> tuple[RunWriter, ExplainOptions, list[dict[str, Any]]]:
    from nacosae.store.runs import RUN_FILE, read_events

    directory = Path(directory).expanduser()
    if not (directory / RUN_FILE).is_file():
        raise NacosaeError(f"--resume {directory}: no run.json there, so it is not a run directory")
    writer = RunWriter.open(directory)
    if writer.record.get("status") == "done":
        raise NacosaeError(f"run {directory.name} is already done: nothing to resume")
    options = ExplainOptions.from_record(writer.record["config"])
    options.save_dir = directory.parent
    resumes = writer.record.get("resumes", 0) + 1
    writer.update(status="running", error=None, resumes=resumes)
    progress.info(f"resuming run {directory.name}")
    return writer, options, read_events(directory)


def _run(
    options: ExplainOptions,
    cache: ModelCache,
    writer: RunWriter,
    recorded: list[dict[str, Any]],
) -> dict[str, Any]:
    from nacosae.controls import resolve_device
    from nacosae.search import neurons as selection
    from nacosae.search.loop import PhaseTimer, Search, SearchSettings
    from nacosae.search.prompts import MAIN_FIELDS, SUMMARY_FIELDS, load_template

    main_template = load_template(options.prompt, MAIN_FIELDS)
    summary_template = load_template(options.summary_prompt, SUMMARY_FIELDS)
    if options.preset == "smoke":
        from nacosae.presets import prepare_smoke

        options = prepare_smoke(options, cache)
        writer.update(note="preset smoke: tiny random models, its results mean nothing")
        progress.warn("--preset smoke uses tiny random models: its results mean nothing")
    device = resolve_device(options.device)
    store = _open_store(options)
    where = f"layer {options.layer} of {options.model}"
    neurons = selection.resolve(options.neurons, store.n_units, options.seed, where)
    timer = PhaseTimer()
    templates = (main_template, summary_template)
    parts, generation = _build_parts(options, cache, store, device, templates)
    writer.update(
        neurons=neurons,
        control_store={
            "path": str(store.directory),
            "weights": store.index["weights"],
            "dataset": store.index["dataset"],
            "images": store.n_images,
            "units": store.n_units,
        },
        generation=generation,
        device=device,
    )
    settings = SearchSettings(
        n_iters=options.n_iters,
        num_img=options.num_img,
        metric=options.metric,
        seed=options.seed,
        save_images=options.save_images,
        t2i_batch=max(options.num_img, 32),
    )
    with progress.progress_bar("phase") as bar:
        task = bar.add_task("explain", total=options.n_iters + 2)

        def show(iteration: int) -> None:
            c = search.counters
            looked_up = c.cache_hits + c.concepts_rendered
            bar.update(
                task,
                completed=iteration + 1,
                description=(
                    f"{len(neurons)} neurons | phase {iteration}/{options.n_iters + 1} | "
                    f"{c.images_rendered} images rendered | concept cache hits "
                    f"{c.cache_hits}/{looked_up}"
                ),
            )

        search = Search(neurons, parts, settings, writer, timer, recorded, show)
        results = search.run()
    summary = {
        "run_id": writer.directory.name,
        "metric": options.metric,
        "neurons": {str(n): results[n] for n in neurons},
    }
    writer.write_summary(summary)
    previous = writer.record.get("totals") or {}
    c = search.counters
    totals = {
        "images_rendered": c.images_rendered + previous.get("images_rendered", 0),
        "cache_hits": c.cache_hits + previous.get("cache_hits", 0),
        "llm_calls": c.llm_calls,
        "parse_retries": c.parse_retries,
        "model_loads": cache.stats.loads,
        "seconds": timer.as_dict(),
    }
    writer.update(totals=totals)
    return summary


def _open_store(options: ExplainOptions) -> Any:
    from nacosae.controls import open_controls

    return open_controls(options.controls_root, options.model, options.layer)


def _build_parts(
    options: ExplainOptions, cache: ModelCache, store: Any, device: str, templates: tuple
) -> tuple[Any, dict[str, Any]]:
    """Load (through the cache) and wire the vision model, T2I, LLM and controls."""
    import numpy as np
    import torch

    from nacosae.controls import compute_dtype, load_vision, vision_spec
    from nacosae.data.images import preprocess_transform
    from nacosae.models.language import HTTPLLM, LanguageModel, LocalLLM, cached_llm_loader
    from nacosae.models.text2image import (
        GenerationSettings,
        TextToImage,
        default_generation,
        load_pipeline,
    )
    from nacosae.models.vision import layer_activations
    from nacosae.search.controls import ControlSelector, embedding_function, load_embedder
    from nacosae.search.loop import SearchParts

    vision_dtype = compute_dtype(store.index["dtype"], device)
    model = cache.get(
        vision_spec(options.model, options.weights, device, vision_dtype), load_vision
    )
    if model.nacosae_weights_id != store.index["weights"]:
        raise NacosaeError(
            f"the control store of {options.model} {options.layer} was built with weights "
            f"{store.index['weights']}, not {model.nacosae_weights_id}: rerun `nacosae controls` "
            "with the same --weights (and --overwrite)"
        )
    transform = preprocess_transform()
    torch_vision_dtype = getattr(torch, vision_dtype)

    def activations(images: list[Any]) -> np.ndarray:
        chunks = []
        for start in range(0, len(images), 64):
            batch = torch.stack([transform(im.convert("RGB")) for im in images[start : start + 64]])
            batch = batch.to(device, dtype=torch_vision_dtype)
            chunks.append(layer_activations(model, options.layer, batch).float().cpu().numpy())
        return np.concatenate(chunks)

    steps, guidance = default_generation(options.t2i_model)
    generation = GenerationSettings(
        model_id=options.t2i_model,
        num_inference_steps=options.num_inf_steps or steps,
        guidance_scale=options.guidance_scale if options.guidance_scale is not None else guidance,
    )
    t2i_dtype = "float16" if device.startswith("cuda") else "float32"
    t2i_spec = ModelSpec(kind="t2i", id=options.t2i_model, dtype=t2i_dtype, device=device)
    t2i = TextToImage(cache.get(t2i_spec, load_pipeline), generation, device)

    if options.llm_url:
        llm: LanguageModel = HTTPLLM(options.llm_url, options.language_model)
    else:
        llm_dtype = "bfloat16" if device.startswith("cuda") else "float32"
        spec = ModelSpec(kind="llm", id=options.language_model, dtype=llm_dtype, device=device)
        llm = LocalLLM(
            cache.get(spec, cached_llm_loader),
            options.language_model,
            device,
            max_new_tokens=options.max_new_tokens,
            constraint=options.llm_constraint,
        )

    embed = None
    if options.control_strategy == "dissimilar-class":
        spec = ModelSpec(kind="embedder", id=options.embedder, device="cpu")
        embed = embedding_function(cache.get(spec, load_embedder))
    class_means = store.class_means().float().numpy()
    import scipy.stats  # noqa: F401 - imported here, with the models, not inside the timed loop

    controls = ControlSelector(
        unit_activations=lambda n: store.unit(n).float().numpy(),
        classes=store.classes,
        strategy=options.control_strategy,
        embed=embed,
    )
    from nacosae.data.images import PREPROCESSING_DESCRIPTION
    from nacosae.models.text2image import PROMPT_SCHEME
    from nacosae.store.concepts import ConceptKeys, ConceptStore

    keys = ConceptKeys(
        generation={
            **asdict(generation),
            "prompt_scheme": PROMPT_SCHEME,
            "seed": options.seed,
            "dtype": t2i_dtype,
            "device": device.split(":")[0],
        },
        vision={
            "model": options.model,
            "weights": model.nacosae_weights_id,
            "layer": options.layer,
            "dtype": vision_dtype,
            "preprocessing": PREPROCESSING_DESCRIPTION,
        },
    )
    parts = SearchParts(
        render_many=t2i.render_many,
        activations=activations,
        chat_many=llm.chat_many,
        concept_store=ConceptStore(Path(options.controls_root).parent / "concepts", keys),
        class_means=class_means,
        classes=store.classes,
        controls=controls,
        main_template=templates[0],
        summary_template=templates[1],
    )
    return parts, asdict(generation)
