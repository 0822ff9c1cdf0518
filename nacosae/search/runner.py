"""`explain`: load every component once, run the search for all neurons, and keep the run
directory truthful (running, done, failed or interrupted) whatever happens. The options come
resolved (presets applied) from the CLI or the API; the runner does not know presets."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae import __version__, progress
from nacosae.errors import Interrupted, NacosaeError
from nacosae.models.cache import ModelCache
from nacosae.search.loop import PHASES, Counters, PhaseTimer
from nacosae.search.options import ExplainOptions
from nacosae.search.prompts import Template
from nacosae.store.runs import RUN_FILE, RunWriter, make_run_id, read_events

if TYPE_CHECKING:
    from nacosae.distributed.cluster import Cluster
    from nacosae.distributed.pool import WorkerPool
    from nacosae.models.preprocessing import Preprocessing
    from nacosae.models.sides import Executor
    from nacosae.models.units import Readout
    from nacosae.search.loop import SearchParts, SearchSettings
    from nacosae.search.model_side import ModelVersions
    from nacosae.store.activations import ControlStore


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
    warnings: list[str] = field(default_factory=list)


@dataclass
class CheckedInputs:
    """Everything about a run's inputs that can be wrong, found out before anything is created
    or loaded: options, output folders, prompt templates, device, control store, neurons."""

    templates: tuple[Template, Template]
    device: str
    store: ControlStore
    neurons: list[int]
    versions: ModelVersions
    readout: Readout  # pooling and SAE
    recipe: Preprocessing  # of the control store
    cluster: Cluster | None = None  # with --ray, reached before anything starts
    dead: list[int] = field(default_factory=list)  # SAE latents that never fire on the controls


def check_store_weights(options: ExplainOptions, store: ControlStore) -> None:
    """A store built with other weights is one line before anything is created or loaded,
    naming the `--weights` to pass (where the weights' name gives their id without loading)."""
    from nacosae.models.vision import named_weights_id, weights_option

    asked = named_weights_id(options.model, options.weights)
    stored = store.index["weights"]
    if asked is not None and asked != stored:
        raise NacosaeError(
            f"the control store of {options.model} {options.layer} was built with weights "
            f"{stored}, not {asked}: pass --weights {weights_option(stored)} (or rebuild the "
            "store with `nacosae controls --overwrite`)"
        )


def check_output_folders(options: ExplainOptions) -> None:
    """The runs folder and NACOSAE_HOME (control stores, concept cache) can be written."""
    from nacosae.config import writable_folder

    writable_folder(options.save_dir, "the runs folder (--out or SAVE_DIR)")
    writable_folder(Path(options.controls_root).parent, "NACOSAE_HOME")


def check_inputs(options: ExplainOptions, pins: dict[str, Any] | None = None) -> CheckedInputs:
    from nacosae.controls import open_controls
    from nacosae.models.devices import resolve_device
    from nacosae.models.units import make_readout
    from nacosae.search import neurons as selection
    from nacosae.search.model_side import resolve_models
    from nacosae.search.prompts import load_template

    options.validate()
    templates = (
        load_template(options.prompt, "main"),
        load_template(options.summary_prompt, "summary"),
    )
    # with Ray the workers resolve the device: the driver may have no GPU
    device = options.device if options.ray else resolve_device(options.device)
    readout = make_readout(options.token_pooling, options.sae, options.latent_pooling)  # type: ignore[arg-type]
    store = open_controls(options.controls_root, options.model, options.layer, readout)
    where = f"layer {options.layer} of {options.model}"
    if readout.sae is not None:
        where = f"the SAE {readout.sae.path.name} on {where}"
    check_store_weights(options, store)
    check_output_folders(options)  # after the store's checks: a refused run creates nothing
    rates = store.firing_rates()
    firing = rates.tolist() if rates is not None else None
    neurons = selection.resolve(options.neurons, store.n_units, options.seed, where, firing)
    dead = [n for n in neurons if firing is not None and firing[n] == 0]
    recipe = store_preprocessing(options, store)
    versions = resolve_models(options, pins)
    cluster = None
    if options.ray:
        from nacosae.distributed.cluster import connect

        cluster = connect(options.ray)
    return CheckedInputs(
        templates, device, store, neurons, versions, readout, recipe, cluster, dead
    )


@dataclass
class Attempt:
    """One process's work on a run: started, counted and timed, recorded however it ends."""

    cache: ModelCache
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    clock: float = field(default_factory=time.perf_counter)
    counters: Counters = field(default_factory=Counters)
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    loads_before: int = 0
    workers: WorkerPool | None = None  # with --ray: loads and scheduling counts
    executor: Executor | None = None  # where the models compute: its back-off notes

    def __post_init__(self) -> None:
        self.loads_before = self.cache.stats.loads

    def model_loads(self) -> int:
        here = self.cache.stats.loads - self.loads_before
        return here + (self.workers.model_loads() if self.workers else 0)

    def record(self, status: str) -> dict[str, Any]:
        c = self.counters
        return {
            "started": self.started,
            "status": status,
            "seconds": round(time.perf_counter() - self.clock, 3),
            "images_rendered": c.images_rendered,
            "cache_hits": c.cache_hits,
            "llm_calls": c.llm_calls,
            "parse_retries": c.parse_retries,
            "model_loads": self.model_loads(),
            "phase_seconds": self.timer.as_dict(),
            "backoffs": list(self.executor.notes) if self.executor else [],
            **({"ray": self.workers.stats()} if self.workers else {}),
        }


def total_of(attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """run.json `totals`: every attempt's work added up (replayed phases are not work)."""
    keys = ("images_rendered", "cache_hits", "llm_calls", "parse_retries", "model_loads")
    totals: dict[str, Any] = {k: sum(a.get(k, 0) for a in attempts) for k in keys}
    totals["seconds"] = {
        phase: round(sum(a.get("phase_seconds", {}).get(phase, 0.0) for a in attempts), 4)
        for phase in PHASES
    }
    totals["wall_seconds"] = round(sum(a.get("seconds", 0.0) for a in attempts), 3)
    return totals


def run_explain(
    options: ExplainOptions, cache: ModelCache, resume: Path | None = None
) -> ExplainResult:
    """Run the search, or with `resume` continue the run in that directory (`options` then come
    from `resumed_options(resume)`). Inputs are checked before any folder is made or model
    loaded; the run directory then records the outcome, whatever it is."""
    inputs = check_inputs(options, _recorded_models(resume) if resume is not None else None)
    if resume is not None:
        writer, recorded = _reopen(resume, options)
        if options.t2i_batch is None:  # the run's own batch, as a back-off may have lowered it
            options.t2i_batch = (writer.record.get("generation") or {}).get("t2i_batch")
    else:
        writer, recorded = _create(options), []
    attempt = Attempt(cache)
    earlier = [
        {**a, "status": "killed"} if a.get("status") == "running" else a
        for a in writer.record.get("attempts", [])
    ]  # an attempt still "running" in run.json was killed before it could say so

    def record(status: str, **fields: Any) -> None:
        attempts = [*earlier, attempt.record(status)]
        totals = total_of(attempts)
        backoffs = [note for a in attempts for note in a.get("backoffs", [])]
        generation = writer.record.get("generation")
        lowered = [n["to"] for n in backoffs if n["kind"] == "t2i" and "offload" not in n]
        if generation and lowered:  # what the run renders with from now on, and on resume
            generation["t2i_batch"] = min(generation["t2i_batch"], *lowered)
        writer.update(
            status=status,
            attempts=attempts,
            totals=totals,
            seconds=totals["wall_seconds"],
            model_cache=cache.stats.as_dict(),
            backoffs=backoffs,
            **fields,
        )

    status, error = "failed", None
    try:
        record("running")
        summary, warnings = _run(
            options, inputs, cache, writer, recorded, attempt, lambda: record("running")
        )
        status = "done"
        return ExplainResult(writer.directory, summary, warnings)
    except KeyboardInterrupt:
        status = "interrupted"
        raise Interrupted(
            f"finished phases are kept; continue with: nacosae explain --resume {writer.directory}"
        ) from None
    except NacosaeError as err:
        error = str(err)
        raise
    except Exception as err:
        if type(err).__name__ != "OutOfMemoryError":
            error = f"{type(err).__name__}: {err}"
            raise
        error = (
            "out of GPU memory outside the batched steps: use --offload sequential, a "
            "--gpu-memory budget below the free memory, or smaller models"
        )
        raise NacosaeError(error) from err
    finally:
        ended = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")} if status == "done" else {}
        record(status, error=error, **ended)
        writer.close()


def _create(options: ExplainOptions) -> RunWriter:
    run_id = make_run_id(options.model, options.layer, options.neurons)
    return RunWriter.create(
        options.save_dir,
        run_id,
        {
            "config": options.record(),
            "versions": _versions(),
            "seed": options.seed,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def resumed_options(directory: Path) -> ExplainOptions:
    """The options an interrupted run was started with (its presets already applied)."""
    import json

    directory = Path(directory).expanduser()
    if not (directory / RUN_FILE).is_file():
        raise NacosaeError(f"--resume {directory}: no run.json there, so it is not a run directory")
    try:
        record = json.loads((directory / RUN_FILE).read_text())
        options = ExplainOptions.from_record(record["config"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NacosaeError(f"--resume {directory}: run.json is unreadable ({exc})") from exc
    if record.get("status") == "done":
        raise NacosaeError(f"run {directory.name} is already done: nothing to resume")
    options.save_dir = directory.parent
    return options


def _recorded_models(directory: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads((Path(directory).expanduser() / RUN_FILE).read_text()).get("models", {})
    except (OSError, ValueError):
        return {}


def _reopen(directory: Path, options: ExplainOptions) -> tuple[RunWriter, list[dict[str, Any]]]:
    """The run's writer and its events so far; the config records where this attempt runs
    (the cluster and the LLM server may change on resume, nothing else)."""
    directory = Path(directory).expanduser()
    writer = RunWriter.open(directory)
    resumes = writer.record.get("resumes", 0) + 1
    where = ("ray", "ray_workers", "llm_url", "llm_timeout", "llm_concurrency")
    config = {**writer.record["config"], **{k: getattr(options, k) for k in where}}
    writer.update(status="running", error=None, resumes=resumes, config=config)
    progress.info(f"resuming run {directory.name}")
    return writer, read_events(directory)


def _run(
    options: ExplainOptions,
    inputs: CheckedInputs,
    cache: ModelCache,
    writer: RunWriter,
    recorded: list[dict[str, Any]],
    attempt: Attempt,
    checkpoint: Callable[[], None],
) -> tuple[dict[str, Any], list[str]]:
    with _executor(options, inputs, cache, attempt) as executor:
        return _search(options, inputs, executor, writer, recorded, attempt, checkpoint)


@contextmanager
def _executor(
    options: ExplainOptions, inputs: CheckedInputs, cache: ModelCache, attempt: Attempt
) -> Iterator[Executor]:
    """Where the models compute: this process, or the workers of a Ray cluster (ended with
    the run, unless they belong to `nacosae serve`)."""
    from nacosae.models.sides import InProcess
    from nacosae.search.model_side import ExplainJob

    job = ExplainJob(
        options, inputs.versions, inputs.store.index["dtype"], inputs.recipe, inputs.readout
    )
    if not options.ray:
        attempt.executor = InProcess(job, cache)
        yield attempt.executor
        return
    from nacosae.distributed.pool import WorkerPool

    assert inputs.cluster is not None
    with WorkerPool.running(inputs.cluster, job, options.ray_workers) as pool:
        attempt.workers = attempt.executor = pool
        yield pool


def _search(
    options: ExplainOptions,
    inputs: CheckedInputs,
    executor: Executor,
    writer: RunWriter,
    recorded: list[dict[str, Any]],
    attempt: Attempt,
    checkpoint: Callable[[], None],
) -> tuple[dict[str, Any], list[str]]:
    from nacosae.search.explanations import distinct_explanations
    from nacosae.search.loop import Search

    neurons = [n for n in inputs.neurons if n not in inputs.dead]  # a dead latent: no search
    parts, settings, facts = _build_parts(options, executor, inputs)
    writer.update(neurons=inputs.neurons, **facts)
    phases = options.n_iters + 2
    label = f"{len(neurons)} neuron" + ("s" if len(neurons) > 1 else "")
    with progress.phase_progress(phases, label) as report:

        def show(iteration: int) -> None:
            checkpoint()  # run.json counts this attempt's work so far, in case it is killed
            c = attempt.counters
            report(
                iteration + 1,
                f"{c.images_rendered} img, cache {c.cache_hits}/"
                f"{c.cache_hits + c.concepts_rendered}",
            )

        search = Search(
            neurons, parts, settings, writer, attempt.timer, recorded, show, attempt.counters
        )
        results = search.run() if neurons else {}
    events = read_events(writer.directory)
    by_neuron = _events_by_neuron(events, neurons)
    embed = (lambda texts: executor.call("embed", texts)) if options.explanations > 1 else None
    for neuron in neurons:
        results[neuron]["explanations"] = distinct_explanations(
            by_neuron[neuron], options.explanations, embed
        )
    for neuron in inputs.dead:
        results[neuron] = never_fires(neuron, options.metric, inputs.store.n_images)
    summary = {
        "run_id": writer.directory.name,
        "metric": options.metric,
        "neurons": {str(n): results[n] for n in inputs.neurons},
    }
    writer.write_summary(summary)
    warnings = run_warnings(events, summary)
    expected = (search.replay.position if neurons else 0) + writer.events_written
    if len(events) < expected:
        warnings.append(
            f"events.jsonl holds {len(events)} of the run's {expected} events (it was deleted "
            "or cut while the run went on): summary.json is complete, but report, the "
            "dashboard and --resume see only what is left"
        )
    writer.update(warnings=warnings)
    return summary, warnings


def _events_by_neuron(
    events: list[dict[str, Any]], neurons: list[int]
) -> dict[int, list[dict[str, Any]]]:
    found: dict[int, list[dict[str, Any]]] = {n: [] for n in neurons}
    for event in events:
        if event.get("neuron") in found:
            found[event["neuron"]].append(event)
    return found


def never_fires(neuron: int, metric: str, images: int) -> dict[str, Any]:
    """The summary of an SAE latent that is 0 on every control image: nothing to search for."""
    return {
        "neuron": neuron,
        "metric": metric,
        "best": None,
        "history": [],
        "best_so_far": [],
        "concepts_scored": 0,
        "llm_calls": 0,
        "parse_retries": 0,
        "note": f"never fires on the control set (0 of {images} control images above 0)",
    }


def run_warnings(events: list[dict[str, Any]], summary: dict[str, Any]) -> list[str]:
    """What makes a finished run's explanations doubtful, in words for the user."""
    warnings = []
    proposals = [e for e in events if e.get("source") in ("llm", "summary")]
    failed = [e for e in proposals if e.get("status") == "failed"]
    if proposals and len(failed) * 2 >= len(proposals):
        retries = sum(e.get("parse_retries", 0) for e in proposals)
        warnings.append(
            f"{len(failed)} of {len(proposals)} LLM proposals could not be used ({retries} "
            "re-asks): the LLM does not follow the answer format; try a larger "
            "--language-model or --prompt cot"
        )
    neurons = summary.get("neurons", {})
    initial = [
        n
        for n, v in neurons.items()
        if ((v.get("best") or {}).get("source") or "").startswith("initial")
    ]
    if neurons and len(initial) == len(neurons):
        warnings.append(
            "every neuron's best concept is one of the initial control classes: no LLM "
            "proposal scored higher"
        )
    return warnings


def _build_parts(
    options: ExplainOptions, executor: Executor, inputs: CheckedInputs
) -> tuple[SearchParts, SearchSettings, dict[str, Any]]:
    """The search's parts (model steps, controls, concept cache), its settings, and the facts
    about them that run.json keeps. `executor` runs the model side: in this process, or on the
    workers of a Ray cluster."""
    from nacosae.search.controls import class_concepts
    from nacosae.search.loop import SearchParts, SearchSettings
    from nacosae.store.concepts import ConceptCache

    store, templates, recipe = inputs.store, inputs.templates, inputs.recipe
    facts = executor.facts()
    if facts.weights_id != store.index["weights"]:
        raise NacosaeError(
            f"the control store of {options.model} {options.layer} was built with weights "
            f"{store.index['weights']}, not {facts.weights_id}: rerun `nacosae controls` "
            "with the same --weights (and --overwrite)"
        )
    names = class_concepts(store.classes, options.class_names)
    parts = SearchParts(
        executor=executor,
        chat_many=lambda requests: executor.call("chat_many", requests),
        concept_cache=ConceptCache(Path(options.controls_root).parent / "concepts", facts.keys),
        class_means=store.class_means().float().numpy(),
        class_names=names,
        controls=_control_selector(store, options, executor, names),
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
        t2i_batch=facts.t2i_batch,
        answer_format=options.answer_format(),
        answer_parsing=options.answer_parsing,
        repeats=options.repeats,
        history_update=options.history_update,
        framing_per_render=options.image_prompts == "line-per-render",
    )
    record = {
        "device": facts.device,
        "control_store": {
            "path": str(store.directory),
            "weights": store.index["weights"],
            "dataset": store.index["dataset"],
            "images": store.n_images,
            "units": store.n_units,
            "preprocessing": recipe.describe(),
            "pooling": inputs.readout.describe(),
            "sae": inputs.readout.identity()["sae"],
        },
        "generation": {**facts.generation, "t2i_batch": facts.t2i_batch},
        "models": facts.models,
        "memory_plan": facts.memory_plan,
    }
    return parts, settings, record


def store_preprocessing(options: ExplainOptions, store: ControlStore) -> Preprocessing:
    """The preprocessing the control store was built with (generated images must be read the
    same way); overrides given to explain must not change it."""
    from nacosae.models.preprocessing import Preprocessing

    stored = Preprocessing.from_json(store.index["preprocessing_recipe"])
    asked = stored.overridden(options.image_size, options.mean, options.std)
    if asked.describe() != stored.describe():
        raise NacosaeError(
            f"the control store of {options.model} {options.layer} was built with preprocessing "
            f"{stored.describe()}, not {asked.describe()}: give explain the same --image-size/"
            "--mean/--std as controls (or none), or rebuild the store with --overwrite"
        )
    return stored


def _control_selector(
    store: ControlStore, options: ExplainOptions, executor: Executor, names: list[str]
) -> Any:
    import scipy.stats  # noqa: F401 - imported here, with the models, not inside the timed loop

    from nacosae.search.controls import ControlSelector

    def embed(texts: list[str]) -> Any:
        return executor.call("embed", texts)

    return ControlSelector(
        unit_activations=lambda n: store.unit(n).float().numpy(),
        classes=store.classes,
        strategy=options.control_strategy,
        embed=embed if options.control_strategy == "dissimilar-class" else None,
        names=names,
    )
