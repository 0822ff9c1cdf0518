"""`explain`: load every component once, run the search for all neurons, and keep the run
directory truthful (running, done, failed or interrupted) whatever happens. The options come
resolved (presets applied) from the CLI or the API; the runner does not know presets."""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nacosae import __version__, progress
from nacosae.errors import NacosaeError
from nacosae.models.cache import GIB, ModelCache
from nacosae.search.options import ExplainOptions
from nacosae.store.runs import RUN_FILE, RunWriter, make_run_id, read_events


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
    options: ExplainOptions, cache: ModelCache, resume: Path | None = None
) -> ExplainResult:
    """Run the search, or with `resume` continue the run in that directory (`options` then come
    from `resumed_options(resume)`); the run directory records the outcome."""
    recorded: list[dict[str, Any]] = []
    if resume is not None:
        writer, recorded = _reopen(resume)
    else:
        options.validate()
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


def resumed_options(directory: Path) -> ExplainOptions:
    """The options an interrupted run was started with (its presets already applied)."""
    import json

    directory = Path(directory).expanduser()
    if not (directory / RUN_FILE).is_file():
        raise NacosaeError(f"--resume {directory}: no run.json there, so it is not a run directory")
    record = json.loads((directory / RUN_FILE).read_text())
    if record.get("status") == "done":
        raise NacosaeError(f"run {directory.name} is already done: nothing to resume")
    options = ExplainOptions.from_record(record["config"])
    options.save_dir = directory.parent
    return options


def _reopen(directory: Path) -> tuple[RunWriter, list[dict[str, Any]]]:
    directory = Path(directory).expanduser()
    writer = RunWriter.open(directory)
    resumes = writer.record.get("resumes", 0) + 1
    writer.update(status="running", error=None, resumes=resumes)
    progress.info(f"resuming run {directory.name}")
    return writer, read_events(directory)


def _run(
    options: ExplainOptions,
    cache: ModelCache,
    writer: RunWriter,
    recorded: list[dict[str, Any]],
) -> dict[str, Any]:
    from nacosae.controls import resolve_device
    from nacosae.search import neurons as selection
    from nacosae.search.loop import PhaseTimer, Search
    from nacosae.search.prompts import load_template

    templates = (
        load_template(options.prompt, "main"),
        load_template(options.summary_prompt, "summary"),
    )
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
        initial_random=options.initial_random,
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
