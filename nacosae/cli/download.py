"""`nacosae download imagenet|models`: bring data and weights onto the machine once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from nacosae import progress
from nacosae.models.downloads import (
    DEFAULT_EMBEDDER,
    DEFAULT_LANGUAGE_MODEL,
    DEFAULT_T2I_MODEL,
    DEFAULT_VISION_MODEL,
)

download_app = typer.Typer(
    help="Fetch the control data and model weights so later runs work offline.",
    no_args_is_help=True,
)


def _token(explicit: str | None) -> str | None:
    from nacosae.config import settings

    return explicit or settings().hf_token


def imagenet(
    split: Annotated[
        Literal["validation", "train"],
        typer.Option(help="50,000 validation images, or the 1.28 million of train."),
    ] = "validation",
    out: Annotated[
        Path | None,
        typer.Option(
            help="ImageFolder tree to write \\[default: NACOSAE_HOME/data/imagenet/val; "
            "imagenet/train for --split train]."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(help="Hugging Face token \\[default: HF_TOKEN].", show_default=False),
    ] = None,
    from_parquet: Annotated[
        Path | None,
        typer.Option(help="Build the tree from parquet files already on disk (offline)."),
    ] = None,
    keep_parquet: Annotated[
        bool, typer.Option(help="Keep the downloaded parquet files in the HF cache.", metavar="")
    ] = True,
    layout: Annotated[
        Literal["wnid", "name"],
        typer.Option(
            help="Class folder names: WordNet ids (n01440764; torchvision's ImageFolder then "
            "numbers classes as the classifiers do) or the concept names."
        ),
    ] = "wnid",
) -> None:
    """Download ImageNet-1k (gated, needs HF_TOKEN) and lay it out as an ImageFolder tree."""
    from nacosae.config import settings, writable_folder
    from nacosae.data import imagenet as inet

    target = out or settings().imagenet_dir(split)
    if from_parquet is not None:
        files = inet.parquet_files(from_parquet, split)
        writable_folder(target, "--out", create=False)
        report = inet.extract(files, target, split, layout)
    else:
        writable_folder(target, "--out", create=False)
        report = inet.download_imagenet(split, target, _token(token), keep_parquet, layout)
    progress.info(
        f"{report.total:,} images in {len(report.per_class)} class folders under {target} "
        f"({report.written:,} written now, {report.already_present:,} already there)"
    )
    if not report.complete:
        progress.warn(
            f"{report.missing:,} of {report.expected:,} {split} images are missing: rerun the "
            "same command to complete the tree"
        )


def models(
    language_model: Annotated[str, typer.Option(help="LLM repo id.")] = DEFAULT_LANGUAGE_MODEL,
    t2i_model: Annotated[str, typer.Option(help="Text-to-image (diffusers) repo id.")] = (
        DEFAULT_T2I_MODEL
    ),
    model: Annotated[str, typer.Option(help="Explained model name.")] = DEFAULT_VISION_MODEL,
    embedder: Annotated[
        str, typer.Option(help="Sentence-transformers repo id.")
    ] = DEFAULT_EMBEDDER,
    token: Annotated[
        str | None,
        typer.Option(help="Hugging Face token \\[default: HF_TOKEN].", show_default=False),
    ] = None,
) -> None:
    """Prefetch the LLM, text-to-image model, embedder and explained model weights."""
    from rich.table import Table

    from nacosae import hub
    from nacosae.config import writable_folder
    from nacosae.models import downloads as dl
    from nacosae.progress import human_bytes

    writable_folder(Path(hub.cache_dir() or hub.default_cache_dir()), "the HF cache", False)
    hf_token = _token(token)
    cached = [
        dl.fetch_vision_model(model),  # first: an unknown name fails before any download
        dl.fetch_language_model(language_model, hf_token),
        dl.fetch_t2i_model(t2i_model, hf_token),
        dl.fetch_embedder(embedder, hf_token),
    ]
    table = Table(title="cached models")
    for column in ("kind", "id", "files", "size", "location"):
        table.add_column(column, justify="right" if column in ("files", "size") else "left")
    for c in cached:
        table.add_row(c.kind, c.id, str(c.files), human_bytes(c.bytes), str(c.path))
    progress.result(table)
