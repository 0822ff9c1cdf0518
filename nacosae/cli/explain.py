"""`nacosae explain`: the iterative LLM + text-to-image concept search for units of a layer."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nacosae import progress

if TYPE_CHECKING:
    from nacosae.search.runner import ExplainResult
from nacosae.models.downloads import DEFAULT_EMBEDDER, DEFAULT_LANGUAGE_MODEL, DEFAULT_T2I_MODEL
from nacosae.models.language import HTTP_CONCURRENCY, MAX_NEW_TOKENS


def explain(
    neuron_id: Annotated[
        list[int] | None, typer.Option("--neuron-id", help="Unit to explain (repeatable).")
    ] = None,
    neurons: Annotated[
        str | None,
        typer.Option(help="Units: 0:100, 1,5,9, or random:50 (CoSy's sample, seeded by --seed)."),
    ] = None,
    neurons_file: Annotated[
        Path | None, typer.Option(help="File of unit ids/ranges (commas, spaces or lines).")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue an interrupted run directory (its own settings are used)."),
    ] = None,
    model: Annotated[str, typer.Option(help="Explained model name.")] = "resnet18",
    layer: Annotated[str, typer.Option(help="Layer module path.")] = "avgpool",
    weights: Annotated[str, typer.Option(help="Weights the control store was built with.")] = (
        "default"
    ),
    language_model: Annotated[str, typer.Option(help="LLM repo id (or served model name).")] = (
        DEFAULT_LANGUAGE_MODEL
    ),
    llm_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server, e.g. http://localhost:8000/v1.")
    ] = None,
    t2i_model: Annotated[str, typer.Option(help="Text-to-image (diffusers) repo id.")] = (
        DEFAULT_T2I_MODEL
    ),
    num_img: Annotated[int, typer.Option(help="Images rendered per concept.")] = 5,
    num_inf_steps: Annotated[
        int | None, typer.Option(help="Diffusion steps \\[default: the model's own].")
    ] = None,
    guidance_scale: Annotated[
        float | None, typer.Option(help="Classifier-free guidance \\[default: the model's own].")
    ] = None,
    n_iters: Annotated[int, typer.Option(help="LLM proposals before the summary step.")] = 10,
    metric: Annotated[str, typer.Option(help="auc, mad or mean: the score that steers.")] = "auc",
    prompt: Annotated[
        str, typer.Option(help="main, few-shot, or a template file with {concepts} {forbidden}.")
    ] = "main",
    summary_prompt: Annotated[
        str, typer.Option(help="summary, or a template file with {concepts}.")
    ] = "summary",
    control_strategy: Annotated[str, typer.Option(help="full or dissimilar-class.")] = "full",
    embedder: Annotated[
        str, typer.Option(help="Sentence embedder for dissimilar-class.")
    ] = DEFAULT_EMBEDDER,
    offload: Annotated[
        str,
        typer.Option(
            help="none, cpu (swap whole models by LRU within --gpu-memory), model (library "
            "model-level CPU offload) or sequential (layer by layer, least memory)."
        ),
    ] = "cpu",
    gpu_memory: Annotated[
        float | None,
        typer.Option(help="GiB of models kept on the GPU \\[default: free memory less a margin]."),
    ] = None,
    t2i_batch: Annotated[
        int | None,
        typer.Option(
            help="Images per text-to-image call \\[default: what the memory fits, <= 32]."
        ),
    ] = None,
    max_new_tokens: Annotated[
        int, typer.Option(help="Most tokens an LLM answer may have (local and --llm-url).")
    ] = MAX_NEW_TOKENS,
    llm_concurrency: Annotated[
        int, typer.Option(help="Most requests in flight to an --llm-url server.")
    ] = HTTP_CONCURRENCY,
    save_images: Annotated[bool, typer.Option(help="Keep the rendered images.")] = True,
    out: Annotated[Path | None, typer.Option(help="Runs directory \\[default: SAVE_DIR].")] = None,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 42,
    device: Annotated[str, typer.Option(help="auto, cuda, cuda:N, mps or cpu.")] = "auto",
    preset: Annotated[
        str | None, typer.Option(help="smoke: tiny random models, no downloads, meaningless.")
    ] = None,
) -> None:
    """Explain units of a layer with an LLM + text-to-image concept search."""
    from nacosae.config import settings
    from nacosae.models.cache import shared_cache
    from nacosae.search.neurons import read_neurons_file
    from nacosae.search.runner import ExplainOptions, run_explain

    config = settings()
    if resume is not None:
        show(run_explain(None, shared_cache(), resume=resume))
        return
    if preset not in (None, "smoke"):
        raise typer.BadParameter("the only preset is smoke", param_hint="--preset")
    selections = [str(n) for n in neuron_id or []]
    selections += [neurons] if neurons else []
    selections += [read_neurons_file(neurons_file)] if neurons_file else []
    if not selections and preset == "smoke":
        selections = ["0"]
    if not selections:
        raise typer.BadParameter(
            "give --neuron-id, --neurons or --neurons-file", param_hint="--neuron-id"
        )
    options = ExplainOptions(
        neurons=selections,
        save_dir=out or config.save_dir,
        controls_root=config.controls_dir,
        model=model,
        layer=layer,
        weights=weights,
        language_model=language_model,
        llm_url=llm_url,
        t2i_model=t2i_model,
        num_img=num_img,
        num_inf_steps=num_inf_steps,
        guidance_scale=guidance_scale,
        n_iters=n_iters,
        metric=metric,
        prompt=prompt,
        summary_prompt=summary_prompt,
        control_strategy=control_strategy,
        embedder=embedder,
        offload=offload,
        gpu_memory=gpu_memory,
        t2i_batch=t2i_batch,
        max_new_tokens=max_new_tokens,
        llm_concurrency=llm_concurrency,
        save_images=save_images,
        seed=seed,
        device=device,
        preset=preset,
    )
    show(run_explain(options, shared_cache()))


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
    progress.console.print(table)
    progress.info(f"run directory: {result.run_dir}")
