"""`nacosae controls`: store every unit's activation on every control image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from nacosae import progress
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


def list_command() -> None:
    """Print a table of the stores under NACOSAE_HOME/controls."""
    from rich.table import Table

    from nacosae.config import settings
    from nacosae.store.activations import list_stores

    rows = list_stores(settings().controls_dir)
    if not rows:
        progress.info(f"no control stores in {settings().controls_dir}")
        return
    table = Table(title=f"control stores in {settings().controls_dir}")
    for column in ("model", "layer", "units", "images", "dtype", "size", "status"):
        table.add_column(column, justify="right" if column in ("units", "images") else "left")
    for r in rows:
        table.add_row(
            r["model"],
            r["layer"],
            str(r["units"] or "-"),
            str(r["images"] or "-"),
            str(r["dtype"] or "-"),
            progress.human_bytes(r["bytes"]),
            str(r["status"]),
        )
    progress.result(table)


def list_layers_command(model: str, weights: str) -> None:
    """Print every layer of `model` with its output shape and unit count."""
    from rich.table import Table

    from nacosae.models.vision import list_layers, load_vision_model

    module, _ = load_vision_model(model, weights)
    table = Table(title=f"layers of {model} (output shape for one image)")
    for column in ("layer", "type", "output shape", "units"):
        table.add_column(column, justify="right" if column == "units" else "left")
    for layer in list_layers(module):
        shape = "x".join(str(d) for d in layer.shape) if layer.shape else "(not run)"
        table.add_row(layer.path, layer.kind, shape, str(layer.units or "-"))
    progress.result(table)


def import_command(folder: Path, model: str, layer: str, weights: str, overwrite: bool) -> None:
    """`controls --from-original`: the original's .pt files as a store."""
    from nacosae.config import settings
    from nacosae.controls.from_original import import_original

    result = import_original(folder, model, layer, weights, settings().controls_dir, overwrite)
    index = result.index
    if result.already_complete:
        progress.info(f"store already complete: {result.directory}; use --overwrite to rebuild")
        return
    progress.info(
        f"[green]imported[/green]: {index['n_images']} rows x {index['n_units']} units "
        f"({index['dtype']}, {len(index['classes'])} classes) in {result.directory}"
    )


def controls(
    context: typer.Context,
    model: Annotated[
        str,
        typer.Option(help="Explained model: a torchvision name, timm:NAME or hf:REPO_ID."),
    ] = "resnet18",
    layer: Annotated[
        str, typer.Option(help="Layer module path, e.g. avgpool or layer4.1.conv2.")
    ] = ("avgpool"),
    images: Annotated[
        Path | None,
        typer.Option(
            help="ImageFolder tree DIR/<class>/<image> \\[default: NACOSAE_HOME/data/imagenet/val]."
        ),
    ] = None,
    weights: Annotated[
        str,
        typer.Option(
            help="default (the published weights), none (random init), a torchvision weights "
            "name, or a state-dict PATH."
        ),
    ] = "default",
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.", min=1)] = 64,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Decoding worker processes \\[default: CPU cores - 1; with --ray, each Ray "
            "worker's share of its cluster's CPUs].",
            min=0,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cuda, cuda:N, mps or cpu.")] = "auto",
    dtype: Annotated[
        Literal["float16", "float32"], typer.Option(help="Stored values (float16 halves the size).")
    ] = "float32",
    shard_size: Annotated[int, typer.Option(help="Images per shard file.", min=1)] = 4096,
    token_pooling: TokenPoolingOption = "cls",
    sae: SaeOption = None,
    latent_pooling: LatentPoolingOption = "auto",
    image_size: ImageSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    ray: RayOption = None,
    ray_workers: RayWorkersOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing store.", metavar="")] = False,
    list_stores: Annotated[
        bool,
        typer.Option("--list", help="List the stored model/layer pairs and exit.", metavar=""),
    ] = False,
    list_layers: Annotated[
        bool,
        typer.Option(help="List the model's layers with their output shapes and exit.", metavar=""),
    ] = False,
    from_original: Annotated[
        Path | None,
        typer.Option(
            help="Import the original project's activations instead: its control_activations/"
            "<model>/<layer> folder of per-class (or per-image) .pt tensors.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Store every unit's activation on every control image (safetensors shards)."""
    if list_stores:
        list_command()
        return
    if list_layers:
        list_layers_command(model, weights)
        return
    if from_original is not None:
        if images is not None or sae is not None:
            raise typer.BadParameter(
                "the original's files are the activations: give no --images or --sae with it",
                param_hint="--from-original",
            )
        import_command(from_original, model, layer, weights, overwrite)
        return
    from nacosae.config import settings
    from nacosae.controls import ControlsRequest, build_controls
    from nacosae.models.cache import shared_cache

    config = settings()
    request = ControlsRequest(
        model=model,
        layer=sae_layer(context, model, layer, sae),
        images=images or config.default_imagenet_dir,
        controls_root=config.controls_dir,
        weights=weights,
        batch_size=batch_size,
        workers=workers,
        device=device,
        dtype=dtype,  # type: ignore[arg-type]
        overwrite=overwrite,
        shard_size=shard_size,
        token_pooling=token_pooling,  # type: ignore[arg-type]
        sae=sae,
        latent_pooling=latent_pooling,
        image_size=image_size,
        mean=triple(mean, "--mean"),
        std=triple(std, "--std"),
        ray=ray,
        ray_workers=ray_workers,
    )
    result = build_controls(request, shared_cache())
    index = result.index
    if result.already_complete:
        progress.info(
            f"store already complete: {result.directory} ({index['n_images']} images x "
            f"{index['n_units']} units); use --overwrite to rebuild"
        )
        return
    progress.info(
        f"[green]done[/green]: {index['n_images']} images x {index['n_units']} units "
        f"({index['dtype']}) in {result.directory}"
    )
