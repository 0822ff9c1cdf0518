"""Options shared by every command that reads a model's units (controls, explain): how images
are preprocessed and how a layer's output becomes units."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

TokenPoolingOption = Annotated[
    Literal["cls", "mean"],
    typer.Option(help="Token sequences (ViT blocks): the class token, or the mean over tokens."),
]
SaeOption = Annotated[
    Path | None,
    typer.Option(
        help="Sparse autoencoder: a safetensors file (W_enc/encoder.weight, b_enc, optional "
        "b_dec) or a SAELens/ViT-Prisma folder (cfg.json + sae_weights.safetensors); its "
        "latents are the units.",
        show_default=False,
    ),
]
LatentPoolingOption = Annotated[
    Literal["auto", "none", "max", "mean", "cls"],
    typer.Option(
        help="With --sae: none (encode the pooled output), or encode every token and take the "
        "max / mean / class token per latent; auto: max for an SAE folder, none for a file.",
    ),
]
ImageSizeOption = Annotated[
    int | None,
    typer.Option(
        help="Resize the shorter side to N and crop N x N \\[default: the weights' own].",
        show_default=False,
    ),
]
MeanOption = Annotated[
    str | None,
    typer.Option(
        help="Normalisation mean, e.g. 0.5,0.5,0.5 \\[default: the weights' own].",
        show_default=False,
    ),
]
StdOption = Annotated[
    str | None,
    typer.Option(
        help="Normalisation std, e.g. 0.5,0.5,0.5 \\[default: the weights' own].",
        show_default=False,
    ),
]


def triple(value: str | None, flag: str) -> tuple[float, float, float] | None:
    """`--mean`/`--std` text as three numbers, or a usage error naming the option."""
    from nacosae.errors import NacosaeError
    from nacosae.models.preprocessing import parse_triple

    try:
        return parse_triple(value, flag)
    except NacosaeError as exc:
        raise typer.BadParameter(str(exc).removeprefix(f"{flag} "), param_hint=flag) from None


def sae_layer(context: typer.Context, model: str, layer: str, sae: Path | None) -> str:
    """The layer whose output an SAE folder's hook reads (`blocks.L.hook_resid_post` -> block
    L), unless --layer was given; a hook nacosae cannot map is one line asking for --layer."""
    from nacosae import progress
    from nacosae.cli.given import options_given
    from nacosae.errors import NacosaeError
    from nacosae.models.sae import folder_hook, hook_layer

    hook = folder_hook(sae)
    if hook is None:
        return layer
    mapped = hook_layer(hook, model)
    if "layer" in options_given(context):
        if mapped is not None and mapped != layer:
            progress.warn(f"--layer {layer} is not {mapped}, whose output the SAE's {hook} is")
        return layer
    if mapped is None:
        raise NacosaeError(
            f"the SAE was trained on {hook}, which nacosae cannot map to a layer of {model}: give "
            "--layer, the module path whose output that hook reads (`controls --list-layers`)"
        )
    progress.info(f"--layer {mapped}: the output the SAE's {hook} reads")
    return mapped
