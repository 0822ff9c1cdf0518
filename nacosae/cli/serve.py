"""`nacosae serve`: warm Ray workers that later `explain --ray auto` runs use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from nacosae import progress
from nacosae.cli.given import options_given
from nacosae.cli.unit_options import LatentPoolingOption, SaeOption, TokenPoolingOption, sae_layer
from nacosae.distributed.service import DEFAULT_IDLE_RELEASE_S
from nacosae.models.downloads import DEFAULT_EMBEDDER, DEFAULT_LANGUAGE_MODEL, DEFAULT_T2I_MODEL

if TYPE_CHECKING:
    from nacosae.search.model_side import ExplainJob


def serve(
    context: typer.Context,
    ray: Annotated[
        str,
        typer.Option(
            help="The Ray cluster: auto (the running one), an address, or local (start one here "
            "and serve until Ctrl-C)."
        ),
    ] = "auto",
    workers: Annotated[
        int | None,
        typer.Option(help="Workers \\[default: one per GPU, or per CPU slot].", show_default=False),
    ] = None,
    idle_release: Annotated[
        float,
        typer.Option(help="Seconds idle after which a worker releases its models (0: never)."),
    ] = DEFAULT_IDLE_RELEASE_S,
    status: Annotated[
        bool,
        typer.Option("--status", help="List the workers: models, memory, idle time.", metavar=""),
    ] = False,
    stop: Annotated[bool, typer.Option("--stop", help="End the workers.", metavar="")] = False,
    model: Annotated[str, typer.Option(help="Explained model, as for explain.")] = "resnet18",
    layer: Annotated[str, typer.Option(help="Layer (its control store must exist).")] = "avgpool",
    weights: Annotated[str, typer.Option(help="Weights of the control store.")] = "default",
    token_pooling: TokenPoolingOption = "cls",
    sae: SaeOption = None,
    latent_pooling: LatentPoolingOption = "auto",
    language_model: Annotated[str, typer.Option(help="LLM repo id.")] = DEFAULT_LANGUAGE_MODEL,
    llm_url: Annotated[
        str | None, typer.Option(help="An LLM server instead (then no LLM is loaded).")
    ] = None,
    t2i_model: Annotated[str, typer.Option(help="Text-to-image repo id.")] = DEFAULT_T2I_MODEL,
    control_strategy: Annotated[
        Literal["full", "dissimilar-class"], typer.Option(help="As for explain.")
    ] = "full",
    embedder: Annotated[str, typer.Option(help="As for explain.")] = DEFAULT_EMBEDDER,
    device: Annotated[str, typer.Option(help="auto, cuda, cuda:N, mps or cpu.")] = "auto",
    offload: Annotated[
        Literal["none", "cpu", "model", "sequential"], typer.Option(help="As for explain.")
    ] = "cpu",
    preset: Annotated[
        list[str] | None,
        typer.Option(
            help="As for explain (repeatable).", show_default=False, metavar="<line|smoke>"
        ),
    ] = None,
) -> None:
    """Keep the models of `explain` loaded on Ray workers; `explain --ray auto` then uses them."""
    from nacosae.distributed.cluster import connect
    from nacosae.distributed.service import (
        serve_in_foreground,
        service_status,
        start_service,
        stop_service,
    )

    if status or stop:
        cluster = connect(ray if ray != "local" else "auto")
        try:
            if stop:
                names = stop_service(cluster)
                progress.info(
                    f"stopped {len(names)} workers" + (": " if names else "") + ", ".join(names)
                )
            else:
                show_status(service_status(cluster))
        finally:
            cluster.close()
        return
    job = _job(context, preset or [])
    cluster = connect(ray)
    try:
        show_status(start_service(cluster, job, workers, idle_release or None))
        if cluster.started_here:
            serve_in_foreground(cluster)
    finally:
        cluster.close()


def _job(context: typer.Context, presets: list[str]) -> ExplainJob:
    """The models `explain` with these options would load, as a job for the workers."""
    from nacosae.config import settings
    from nacosae.models.cache import shared_cache
    from nacosae.presets import apply_presets, prepare
    from nacosae.search.model_side import ExplainJob
    from nacosae.search.options import ExplainOptions
    from nacosae.search.runner import check_inputs

    params = context.params
    config = settings()
    fields = set(ExplainOptions.__dataclass_fields__) - {"neurons", "preset", "ray"}
    options = ExplainOptions(
        neurons=["0"],
        save_dir=config.save_dir,
        controls_root=config.controls_dir,
        **{k: v for k, v in params.items() if k in fields},
    )
    options.sae = str(Path(params["sae"]).expanduser().resolve()) if params["sae"] else None
    options.layer = sae_layer(context, options.model, options.layer, params["sae"])
    options = prepare(apply_presets(options, presets, options_given(context)), shared_cache())
    inputs = check_inputs(options)
    return ExplainJob(
        options, inputs.versions, inputs.store.index["dtype"], inputs.recipe, inputs.readout
    )


def show_status(workers: list[dict]) -> None:
    from rich.table import Table

    if not workers:
        progress.info("no `nacosae serve` workers on this cluster")
        return
    table = Table(title="nacosae serve workers")
    for column in ("worker", "host", "pid", "models", "loads", "RSS GiB", "GPU GiB", "idle s"):
        table.add_column(column)
    for w in workers:
        table.add_row(
            w["name"],
            w["host"],
            str(w["pid"]),
            "\n".join(w["models"]) or "(released)",
            str(w["loads"]),
            f"{w['rss_gib']:.2f}",
            f"{w['gpu_gib']:.2f}",
            f"{w['idle_s']:.0f}",
        )
    progress.result(table)
