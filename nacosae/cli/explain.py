"""`nacosae explain`: the iterative LLM + text-to-image concept search for units of a layer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from nacosae import progress
from nacosae.cli.given import options_given
from nacosae.cli.ray_options import RayOption, RayWorkersOption
from nacosae.cli.unit_options import (
    ImageSizeOption,
    LatentPoolingOption,
    MeanOption,
    SaeOption,
    StdOption,
    TokenPoolingOption,
    sae_layer,
    triple,
)

if TYPE_CHECKING:
    from nacosae.search.options import ExplainOptions
    from nacosae.search.runner import ExplainResult
from nacosae.models.concept_images import MIN_IMAGES
from nacosae.models.downloads import DEFAULT_EMBEDDER, DEFAULT_LANGUAGE_MODEL, DEFAULT_T2I_MODEL
from nacosae.models.language import (
    HTTP_CONCURRENCY,
    HTTP_TIMEOUT,
    MAX_NEW_TOKENS,
    MIN_NEW_TOKENS,
)

ORIGINAL_PANEL = "The original's behaviours (set by --preset line)"
UNITS_PANEL = "Units"
MODELS_PANEL = "Models"
SEARCH_PANEL = "The search"
IMAGES_PANEL = "Images"
LLM_PANEL = "LLM answers"
RESOURCES_PANEL = "Memory and devices"
RUN_PANEL = "The run"


def explain(
    context: typer.Context,
    neuron_id: Annotated[
        list[int] | None,
        typer.Option(
            "--neuron-id", help="Unit to explain (repeatable).", rich_help_panel=UNITS_PANEL
        ),
    ] = None,
    neurons: Annotated[
        str | None,
        typer.Option(
            help="Units: 0:100, 1,5,9, or random:50 (CoSy's sample, seeded by --seed).",
            rich_help_panel=UNITS_PANEL,
        ),
    ] = None,
    neurons_file: Annotated[
        Path | None,
        typer.Option(
            help="File of unit ids/ranges (commas, spaces or lines).", rich_help_panel=UNITS_PANEL
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue an interrupted run directory with its own settings (where the "
            "models run may change: --ray, --ray-workers, --llm-url, --llm-timeout).",
            rich_help_panel=RUN_PANEL,
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            help="Explained model: a torchvision name, timm:NAME or hf:REPO_ID.",
            rich_help_panel=UNITS_PANEL,
        ),
    ] = "resnet18",
    layer: Annotated[
        str, typer.Option(help="Layer module path.", rich_help_panel=UNITS_PANEL)
    ] = "avgpool",
    weights: Annotated[
        str,
        typer.Option(help="Weights the control store was built with.", rich_help_panel=UNITS_PANEL),
    ] = ("default"),
    token_pooling: TokenPoolingOption = "cls",
    sae: SaeOption = None,
    latent_pooling: LatentPoolingOption = "auto",
    image_size: ImageSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    language_model: Annotated[
        str, typer.Option(help="LLM repo id (or served model name).", rich_help_panel=MODELS_PANEL)
    ] = (DEFAULT_LANGUAGE_MODEL),
    llm_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible server, e.g. http://localhost:8000/v1.",
            rich_help_panel=MODELS_PANEL,
        ),
    ] = None,
    t2i_model: Annotated[
        str, typer.Option(help="Text-to-image (diffusers) repo id.", rich_help_panel=MODELS_PANEL)
    ] = DEFAULT_T2I_MODEL,
    num_img: Annotated[
        int,
        typer.Option(
            help="Images rendered per concept.", min=MIN_IMAGES, rich_help_panel=SEARCH_PANEL
        ),
    ] = 5,
    num_inf_steps: Annotated[
        int | None,
        typer.Option(
            help="Diffusion steps \\[default: the model's own].",
            min=1,
            rich_help_panel=IMAGES_PANEL,
        ),
    ] = None,
    guidance_scale: Annotated[
        str | None,
        typer.Option(
            help="Classifier-free guidance: a number, or 'pipeline' for the pipeline's own "
            "default \\[default: the model's own].",
            show_default=False,
            rich_help_panel=IMAGES_PANEL,
        ),
    ] = None,
    n_iters: Annotated[
        int,
        typer.Option(
            help="LLM proposals before the summary step.", min=0, rich_help_panel=SEARCH_PANEL
        ),
    ] = 10,
    metric: Annotated[
        Literal["auc", "mad", "mean", "auprc", "correlation"],
        typer.Option(help="The score that steers the search.", rich_help_panel=SEARCH_PANEL),
    ] = "auc",
    prompt: Annotated[
        str,
        typer.Option(
            help="main, cot (chain of thought), or a template file with {concepts} {forbidden}.",
            rich_help_panel=SEARCH_PANEL,
        ),
    ] = "main",
    summary_prompt: Annotated[
        str,
        typer.Option(
            help="summary, or a template file with {concepts}.", rich_help_panel=SEARCH_PANEL
        ),
    ] = "summary",
    control_strategy: Annotated[
        Literal["full", "dissimilar-class"],
        typer.Option(
            help="All control images, or one class unlike the concept (the original).",
            rich_help_panel=SEARCH_PANEL,
        ),
    ] = "full",
    embedder: Annotated[
        str,
        typer.Option(help="Sentence embedder for dissimilar-class.", rich_help_panel=MODELS_PANEL),
    ] = DEFAULT_EMBEDDER,
    offload: Annotated[
        Literal["auto", "none", "cpu", "model", "sequential"],
        typer.Option(
            help="Where models live on a GPU: auto (the memory plan places each model), none "
            "(all resident), cpu (whole models swapped by LRU), model or sequential (the "
            "libraries' model-level or layer-by-layer CPU offload) for every model.",
            rich_help_panel=RESOURCES_PANEL,
        ),
    ] = "auto",
    gpu_memory: Annotated[
        float | None,
        typer.Option(
            help="GiB the run may use on the GPU, weights and working memory \\[default: free "
            "memory less a margin].",
            rich_help_panel=RESOURCES_PANEL,
        ),
    ] = None,
    t2i_batch: Annotated[
        int | None,
        typer.Option(
            help="Images per text-to-image call \\[default: the memory plan's, <= 32; 8 on a CPU].",
            min=1,
            rich_help_panel=RESOURCES_PANEL,
        ),
    ] = None,
    llm_batch: Annotated[
        int | None,
        typer.Option(
            help="Local LLM chats per generate call \\[default: the memory plan's, <= 16].",
            min=1,
            rich_help_panel=RESOURCES_PANEL,
        ),
    ] = None,
    max_new_tokens: Annotated[
        int,
        typer.Option(
            help="Most tokens an LLM answer may have (local and --llm-url).",
            min=MIN_NEW_TOKENS,
            rich_help_panel=LLM_PANEL,
        ),
    ] = MAX_NEW_TOKENS,
    reasoning_chars: Annotated[
        int | None,
        typer.Option(
            help="Most characters of a JSON answer's reasoning \\[default: bounded by "
            "--max-new-tokens only]; for a small model that rambles.",
            min=1,
            rich_help_panel=LLM_PANEL,
        ),
    ] = None,
    llm_concurrency: Annotated[
        int,
        typer.Option(
            help="Most requests in flight to an --llm-url server.", min=1, rich_help_panel=LLM_PANEL
        ),
    ] = HTTP_CONCURRENCY,
    llm_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds an --llm-url request may take before it is retried (5 retries).",
            min=0.001,
            rich_help_panel=LLM_PANEL,
        ),
    ] = HTTP_TIMEOUT,
    llm_output: Annotated[
        Literal["auto", "json", "tags"],
        typer.Option(
            help="How the LLM answers: json (a schema the server or a constrained decoder "
            "enforces), tags (<answer>...</answer>), or auto: json where the backend supports it.",
            rich_help_panel=LLM_PANEL,
        ),
    ] = "auto",
    save_images: Annotated[
        bool, typer.Option(help="Keep the rendered images.", metavar="", rich_help_panel=RUN_PANEL)
    ] = True,
    out: Annotated[
        Path | None,
        typer.Option(help="Runs directory \\[default: SAVE_DIR].", rich_help_panel=RUN_PANEL),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed for every random choice.", rich_help_panel=RUN_PANEL)
    ] = 42,
    device: Annotated[
        str, typer.Option(help="auto, cuda, cuda:N, mps or cpu.", rich_help_panel=RESOURCES_PANEL)
    ] = "auto",
    image_prompts: Annotated[
        Literal["varied", "line", "line-per-render"],
        typer.Option(
            help="An angle and light per image, or the original's prompt: its framing drawn "
            "once per concept (line) or for every render as the original did.",
            rich_help_panel=IMAGES_PANEL,
        ),
    ] = "varied",
    class_names: Annotated[
        Literal["ours", "original"],
        typer.Option(
            help="Control classes as concepts: our unambiguous names, or the original's folder "
            "names ('crane' and 'crane2').",
            rich_help_panel=ORIGINAL_PANEL,
        ),
    ] = "ours",
    answer_parsing: Annotated[
        Literal["strict", "original"],
        typer.Option(
            help="strict: 1-3 words, no fragments, re-asked otherwise; original: the first "
            "answer block as it stands.",
            rich_help_panel=ORIGINAL_PANEL,
        ),
    ] = "strict",
    repeats: Annotated[
        Literal["re-ask", "rescore"],
        typer.Option(
            help="A proposal tried before: asked again, or rendered and scored again with the "
            "new score in the history (the original).",
            rich_help_panel=ORIGINAL_PANEL,
        ),
    ] = "re-ask",
    history_update: Annotated[
        Literal["replace", "original"],
        typer.Option(
            help="A new concept takes the evicted one's place, or the evicted one is deleted "
            "and the new one appended (the original).",
            rich_help_panel=ORIGINAL_PANEL,
        ),
    ] = "replace",
    explanations: Annotated[
        int,
        typer.Option(
            help="Distinct concepts listed per unit (polysemantic units): each significant "
            "against the controls (Bonferroni) and unlike the others (MiniLM).",
            min=1,
            rich_help_panel=SEARCH_PANEL,
        ),
    ] = 1,
    llm_top_k: Annotated[
        int | None,
        typer.Option(
            help="Sample from the k most likely tokens only \\[default: no limit; the original: "
            "50].",
            min=1,
            rich_help_panel=ORIGINAL_PANEL,
        ),
    ] = None,
    image_seeds: Annotated[
        Literal["hashed", "index"],
        typer.Option(
            help="Noise seeded per seed, concept and image, or the original's 0..n-1.",
            rich_help_panel=IMAGES_PANEL,
        ),
    ] = "hashed",
    ray: RayOption = None,
    ray_workers: RayWorkersOption = None,
    preset: Annotated[
        list[str] | None,
        typer.Option(
            help="line: the published experiments, setting by setting; smoke: tiny random "
            "models, no downloads, meaningless. Repeatable; options you give win.",
            show_default=False,
            metavar="<line|smoke>",
            rich_help_panel=RUN_PANEL,
        ),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Resolve the options, check the inputs and print them with the memory plan as "
            "JSON; load and create nothing (with --device cuda --gpu-memory G: plan for that "
            "card on any machine).",
            metavar="",
            rich_help_panel=RUN_PANEL,
        ),
    ] = False,
) -> None:
    """Explain units of a layer with an LLM + text-to-image concept search."""
    from nacosae.models.cache import shared_cache
    from nacosae.presets import prepare
    from nacosae.search.runner import resumed_options, run_explain

    cache = shared_cache()
    if resume is not None:
        options = resumed_options(resume)
        overrides = _resume_overrides(context)
        if "llm_url" in overrides and not options.llm_url:
            raise typer.BadParameter(
                "this run used a local LLM; --llm-url moves a run's LLM server, not its LLM",
                param_hint="--llm-url",
            )
        for name in overrides:
            setattr(options, name, context.params[name])
    else:
        options = _options_from_command_line(context, preset or [])
    if dry_run:
        show_dry_run(options)
        return
    options.validate()  # before the presets build anything
    show(run_explain(prepare(options, cache), cache, resume=resume))


def show_dry_run(options: ExplainOptions) -> None:
    """The dry run's JSON on stdout; its problems as error lines (exit 1)."""
    import json

    from nacosae.errors import NacosaeError
    from nacosae.search.dry_run import dry_run

    report = dry_run(options)
    typer.echo(json.dumps(report, indent=2, default=str))
    if report["problems"]:
        for problem in report["problems"][1:]:
            progress.error(problem)
        raise NacosaeError(report["problems"][0])


def _options_from_command_line(context: typer.Context, presets: list[str]) -> ExplainOptions:
    """The command's options, with presets applied where the user gave no value."""

    from nacosae.config import settings
    from nacosae.presets import PRESETS, apply_presets
    from nacosae.search.neurons import read_neurons_file
    from nacosae.search.options import ExplainOptions

    for name in presets:
        if name not in PRESETS:
            raise typer.BadParameter(
                f"{name!r} is not one of {', '.join(PRESETS)}", param_hint="--preset"
            )

    params = context.params
    selections = [str(n) for n in params["neuron_id"] or []]
    selections += [params["neurons"]] if params["neurons"] else []
    selections += [read_neurons_file(params["neurons_file"])] if params["neurons_file"] else []
    if not selections and "smoke" in presets:
        selections = ["0"]
    if not selections:
        raise typer.BadParameter(
            "give --neuron-id, --neurons or --neurons-file", param_hint="--neuron-id"
        )
    config = settings()
    fields = set(ExplainOptions.__dataclass_fields__) - {"neurons", "preset"}
    options = ExplainOptions(
        neurons=selections,
        save_dir=params["out"] or config.save_dir,
        controls_root=config.controls_dir,
        **{k: v for k, v in params.items() if k in fields},
    )
    options.guidance_scale = _guidance(params["guidance_scale"])
    options.mean, options.std = triple(params["mean"], "--mean"), triple(params["std"], "--std")
    options.sae = str(params["sae"].expanduser().resolve()) if params["sae"] else None
    options.layer = sae_layer(context, options.model, options.layer, params["sae"])
    return apply_presets(options, presets, options_given(context))


# where the models run (a cluster, an LLM server that moved): the results are the same
RESUME_OVERRIDES = {"ray", "ray_workers", "llm_url", "llm_timeout", "llm_concurrency"}


def _resume_overrides(context: typer.Context) -> set[str]:
    """The options a resumed run takes from the command line: where its models run (--ray,
    --ray-workers, an LLM server that moved: --llm-url, --llm-timeout, --llm-concurrency);
    any other setting is the run's own."""
    given = options_given(context, ("COMMANDLINE",))
    refused = given - RESUME_OVERRIDES - {"resume"}
    if refused:
        names = ", ".join(f"--{name.replace('_', '-')}" for name in sorted(refused))
        raise typer.BadParameter(
            f"a resumed run keeps its own settings, so {names} cannot be given with it (only "
            "--ray and --ray-workers can); start a new run for other settings",
            param_hint="--resume",
        )
    return given & RESUME_OVERRIDES


def _guidance(value: str | None) -> float | str | None:
    if value is None or value == "pipeline":
        return value
    try:
        return float(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither a number nor 'pipeline'", param_hint="--guidance-scale"
        ) from None


def show(result: ExplainResult) -> None:
    """The final table: neuron -> best concept and score."""
    from rich.table import Table

    table = Table(title=f"run {result.run_dir.name}")
    for column in ("neuron", "best concept", result.summary["metric"], "source"):
        table.add_column(column)
    for neuron, found in result.summary["neurons"].items():
        best = found["best"] or {}
        score = f"{best['score']:.4f}" if best else "-"
        table.add_row(neuron, str(best.get("concept", "-")), score, str(best.get("source", "-")))
    progress.result(table)
    for warning in result.warnings:  # full lines on stderr, not wrapped to the table's width
        progress.warn(warning)
    progress.info(f"run directory: {result.run_dir}")
