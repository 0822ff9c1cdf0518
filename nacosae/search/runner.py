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
from nacosae.models.cache import GIB, ModelCache
from nacosae.models.downloads import DEFAULT_EMBEDDER, DEFAULT_LANGUAGE_MODEL, DEFAULT_T2I_MODEL
from nacosae.models.language import HTTP_CONCURRENCY, MAX_NEW_TOKENS
from nacosae.models.residency import OFFLOAD_MODES
from nacosae.search.controls import STRATEGIES
from nacosae.search.scoring import METRICS
from nacosae.store.runs import RunWriter, make_run_id


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
    gpu_memory: float | None = None  # GiB of whole models per accelerator (None: free memory)
    t2i_batch: int | None = None  # images per text-to-image call (None: what the memory fits)
    save_images: bool = True
    seed: int = 42
    device: str = "auto"
    preset: str | None = None
    max_new_tokens: int = MAX_NEW_TOKENS
    llm_concurrency: int = HTTP_CONCURRENCY
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
            raise NacosaeError(
                f"unknown --offload {self.offload!r}: use {', '.join(OFFLOAD_MODES)}"
            )
        if self.gpu_memory is not None and self.gpu_memory <= 0:
            raise NacosaeError("--gpu-memory must be a positive number of GiB")
        if self.t2i_batch is not None and self.t2i_batch < 1:
            raise NacosaeError("--t2i-batch must be at least 1")
        if self.max_new_tokens < 16:
            raise NacosaeError("--max-new-tokens must be at least 16 (room for an answer)")
        if self.llm_concurrency < 1:
            raise NacosaeError("--llm-concurrency must be at least 1")
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
    cache.set_budget(options.gpu_memory * GIB if options.gpu_memory else None)
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
                "out of GPU memory: use --offload model (or sequential), a --gpu-memory budget "
                "below the free memory, a smaller --t2i-batch, or smaller models"
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
    from nacosae.search.loop import PhaseTimer, Search
    from nacosae.search.prompts import MAIN_FIELDS, SUMMARY_FIELDS, load_template

    templates = (
        load_template(options.prompt, MAIN_FIELDS),
        load_template(options.summary_prompt, SUMMARY_FIELDS),
    )
    if options.preset == "smoke":
        from nacosae.presets import prepare_smoke

        options = prepare_smoke(options, cache)
        writer.update(note="preset smoke: tiny random models, its results mean nothing")
        progress.warn("--preset smoke uses tiny random models: its results mean nothing")
    device = resolve_device(options.device)
    store = _open_store(options)
    where = f"layer {options.layer} of {options.model}"
    neurons = selection.resolve(options.neurons, store.n_units, options.seed, where)
    parts, settings, facts = _build_parts(options, cache, store, device, templates, writer.record)
    writer.update(neurons=neurons, device=device, **facts)
    timer = PhaseTimer()
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
    options: ExplainOptions,
    cache: ModelCache,
    store: Any,
    device: str,
    templates: tuple,
    record: dict[str, Any],
) -> tuple[Any, Any, dict[str, Any]]:
    """The search's parts (model steps, controls, concept cache), its settings, and the facts
    about them that run.json keeps."""
    from nacosae.controls import compute_dtype
    from nacosae.search import components
    from nacosae.search.loop import SearchParts, SearchSettings

    vision_dtype = compute_dtype(store.index["dtype"], device)
    models = components.build_models(
        options, cache, device, vision_dtype, pins=record.get("models")
    )
    weights_id = components.weights_id(models.vision)
    if weights_id != store.index["weights"]:
        raise NacosaeError(
            f"the control store of {options.model} {options.layer} was built with weights "
            f"{store.index['weights']}, not {weights_id}: rerun `nacosae controls` "
            "with the same --weights (and --overwrite)"
        )
    generation = _generation_settings(options)
    variant, native_side = components.t2i_facts(models.t2i)
    t2i_batch = options.t2i_batch or components.default_t2i_batch(
        models, cache, generation, native_side, device
    )
    parts = SearchParts(
        render_many=_t2i_backend(models, generation).render_many,
        activations=components.vision_activations(models.vision, options.layer),
        chat_many=models.llm.chat_many,
        concept_store=_concept_store(
            options, models, generation, variant, weights_id, vision_dtype, device
        ),
        class_means=store.class_means().float().numpy(),
        classes=store.classes,
        controls=_control_selector(store, options, models),
        main_template=templates[0],
        summary_template=templates[1],
    )
    settings = SearchSettings(
        n_iters=options.n_iters,
        num_img=options.num_img,
        metric=options.metric,
        seed=options.seed,
        save_images=options.save_images,
        t2i_batch=t2i_batch,
    )
    facts = {
        "control_store": {
            "path": str(store.directory),
            "weights": store.index["weights"],
            "dataset": store.index["dataset"],
            "images": store.n_images,
            "units": store.n_units,
        },
        "generation": {**asdict(generation), "variant": variant, "t2i_batch": t2i_batch},
        "models": models.record(options),
    }
    return parts, settings, facts


def _generation_settings(options: ExplainOptions) -> Any:
    from nacosae.models.text2image import GenerationSettings, default_generation

    steps, guidance = default_generation(options.t2i_model)
    return GenerationSettings(
        model_id=options.t2i_model,
        num_inference_steps=options.num_inf_steps or steps,
        guidance_scale=options.guidance_scale if options.guidance_scale is not None else guidance,
    )


def _t2i_backend(models: Any, generation: Any) -> Any:
    from nacosae.models.text2image import TextToImage

    return TextToImage(models.t2i, generation)


def _control_selector(store: Any, options: ExplainOptions, models: Any) -> Any:
    import scipy.stats  # noqa: F401 - imported here, with the models, not inside the timed loop

    from nacosae.search.controls import ControlSelector, embedding_function

    embed = None
    if models.embedder is not None:
        embed = embedding_function(models.embedder)
    return ControlSelector(
        unit_activations=lambda n: store.unit(n).float().numpy(),
        classes=store.classes,
        strategy=options.control_strategy,
        embed=embed,
    )


def _concept_store(
    options: ExplainOptions,
    models: Any,
    generation: Any,
    variant: str,
    weights_id: str,
    vision_dtype: str,
    device: str,
) -> Any:
    """The concept cache of this run's settings: its keys hold every setting that changes the
    images (the pipeline's resolved revision and weight variant included) or the activations."""
    from nacosae.data.images import PREPROCESSING_DESCRIPTION
    from nacosae.models.text2image import PROMPT_SCHEME
    from nacosae.store.concepts import ConceptKeys, ConceptStore

    keys = ConceptKeys(
        generation={
            **asdict(generation),
            "revision": models.t2i.spec.revision,
            "variant": variant,
            "prompt_scheme": PROMPT_SCHEME,
            "seed": options.seed,
            "dtype": models.t2i.spec.dtype,
            "device": device.split(":")[0],
        },
        vision={
            "model": options.model,
            "weights": weights_id,
            "layer": options.layer,
            "dtype": vision_dtype,
            "preprocessing": PREPROCESSING_DESCRIPTION,
        },
    )
    return ConceptStore(Path(options.controls_root).parent / "concepts", keys)
