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
        help="Sparse autoencoder (safetensors: W_enc/encoder.weight, b_enc, optional b_dec) on "
        "the layer's pooled output: its latents are the units.",
        show_default=False,
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
