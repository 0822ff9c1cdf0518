"""Build the control activation store: one pass of the control images through the model.

Images are decoded and resized in DataLoader workers while the model runs, so decoding
overlaps compute. Activations of every unit of the layer are written shard by shard; an
interrupted build resumes at the first missing shard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nacosae import progress
from nacosae.config import writable_folder
from nacosae.data.images import ControlImages, ImageFolderListing, list_image_folder
from nacosae.errors import ImagesNotFound, NacosaeError
from nacosae.models.cache import ModelCache, ModelSpec
from nacosae.models.preprocessing import Preprocessing, Triple
from nacosae.models.residency import OffloadMode
from nacosae.models.units import Readout, TokenPooling, make_readout
from nacosae.store.activations import ControlStore, StoreBuilder, shard_spans, store_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

DType = Literal["float16", "float32"]
DEFAULT_SHARD_SIZE = 4096


@dataclass(frozen=True)
class ControlsRequest:
    """What `nacosae controls` was asked to build."""

    model: str
    layer: str
    images: Path
    controls_root: Path
    weights: str = "default"
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    dtype: DType = "float32"
    overwrite: bool = False
    shard_size: int = DEFAULT_SHARD_SIZE
    token_pooling: TokenPooling = "cls"
    sae: Path | None = None
    image_size: int | None = None
    mean: Triple | None = None
    std: Triple | None = None

    def readout(self) -> Readout:
        return make_readout(self.token_pooling, self.sae)


def resolve_device(device: str) -> str:
    """`auto` -> cuda, then mps, then cpu; an unavailable explicit choice is an error."""
    import torch

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if device.startswith("cuda") and not cuda:
        raise NacosaeError("CUDA is not available on this machine: use --device cpu or auto")
    if device == "mps" and not mps:
        raise NacosaeError("Apple MPS is not available on this machine: use --device cpu or auto")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise NacosaeError(f"unknown device {device!r}: use auto, cuda, cuda:N, mps or cpu")
    return device


def default_workers() -> int:
    import os

    return max(1, min(8, (os.cpu_count() or 2) - 1))


def compute_dtype(dtype: DType, device: str) -> str:
    """float16 runs on accelerators; on the CPU the model computes in float32 and stores float16."""
    return "float16" if dtype == "float16" and device != "cpu" else "float32"


def load_vision(spec: ModelSpec) -> nn.Module:
    """ModelCache loader for kind 'vision' (weights in `spec.options`)."""
    import torch

    from nacosae.models.vision import load_vision_model

    model, weights_id = load_vision_model(spec.id, dict(spec.options).get("weights", "default"))
    model = model.to(getattr(torch, spec.dtype))
    model.nacosae_weights_id = weights_id
    return model


def vision_spec(
    model: str, weights: str, device: str, dtype: str, offload: OffloadMode = "none"
) -> ModelSpec:
    return ModelSpec(
        kind="vision",
        id=model,
        dtype=dtype,
        device=device,
        offload=offload,
        options=(("weights", weights),),
    )


@dataclass
class ControlsResult:
    directory: Path
    index: dict[str, Any]
    already_complete: bool
    images_processed: int


def build_controls(request: ControlsRequest, cache: ModelCache) -> ControlsResult:
    """Build (or resume, or keep) the store for `request.model` / `request.layer`."""
    import torch

    if request.batch_size < 1:
        raise NacosaeError("--batch-size must be at least 1")
    if request.shard_size < 1:
        raise NacosaeError("--shard-size must be at least 1")
    if request.image_size is not None and request.image_size < 8:
        raise NacosaeError("--image-size must be at least 8 pixels")
    writable_folder(request.controls_root, "the control store folder (NACOSAE_HOME/controls)")
    listing = list_image_folder(request.images)
    readout = request.readout()
    device = resolve_device(request.device)
    run_dtype = compute_dtype(request.dtype, device)
    spec = vision_spec(request.model, request.weights, device, run_dtype)
    torch_dtype = getattr(torch, run_dtype)
    with cache.use(spec, load_vision) as model:
        recipe = model_preprocessing(model, request.image_size, request.mean, request.std)
        builder = _store_builder(request, listing, model, device, torch_dtype, recipe, readout)
        directory = builder.directory
        done = builder.begin(overwrite=request.overwrite)
        if builder.complete:
            return ControlsResult(directory, builder.index, True, 0)
        if done:
            progress.info(f"resuming: {done} of {len(builder.spans)} shards already written")
        processed = 0
        if done < len(builder.spans):  # else it was killed while writing the last files
            processed = _extract(
                request, listing, builder, model, device, torch_dtype, done, recipe, readout
            )
    if builder.next_row() == 0:
        builder.abandon()
        raise ImagesNotFound(
            f"none of the {len(listing):,} image files under {listing.root} could be read (e.g. "
            f"{listing.files[0]}): check that they are images, then rerun"
        )
    index = builder.finish([c.folder for c in listing.classes])
    if index["skipped"]:
        names = ", ".join(index["skipped"][:5]) + (" ..." if len(index["skipped"]) > 5 else "")
        progress.warn(
            f"{len(index['skipped'])} unreadable images skipped ({names}); "
            f"all are listed under 'skipped' in {directory / 'index.json'}"
        )
    return ControlsResult(directory, index, False, processed)


def _store_builder(
    request: ControlsRequest,
    listing: ImageFolderListing,
    model: nn.Module,
    device: str,
    torch_dtype: torch.dtype,
    recipe: Preprocessing,
    readout: Readout,
) -> StoreBuilder:
    """The store to write: its identity (what a later request must match) and its layout."""
    from nacosae.models.vision import count_units, resolve_layer

    resolve_layer(model, request.layer, request.model)
    identity = {
        "model": request.model,
        "layer": request.layer,
        "weights": model.nacosae_weights_id,
        "dataset": listing.dataset_id(),
        "dtype": request.dtype,
        "preprocessing": recipe.describe(),
        "units": readout.identity(),
    }
    details = {
        "dataset_root": str(listing.root),
        "dataset_images": len(listing),
        "pooling": readout.describe(),
        "preprocessing_recipe": recipe.to_json(),
        "sae": None
        if readout.sae is None
        else {"file": str(readout.sae.path), "d_in": readout.sae.d_in, "d_sae": readout.sae.d_sae},
        "classes": [
            {
                "index": c.index,
                "wnid": c.wnid,
                "folder": c.folder,
                "label": c.label,
                "concept": c.concept,
            }
            for c in listing.classes
        ],
    }
    n_units = count_units(model, request.layer, device, torch_dtype, readout)
    spans = shard_spans(len(listing), request.shard_size)
    directory = store_dir(request.controls_root, request.model, request.layer, readout.variant)
    return StoreBuilder(directory, identity, n_units, spans, details)


def _extract(
    request: ControlsRequest,
    listing: ImageFolderListing,
    builder: StoreBuilder,
    model: nn.Module,
    device: str,
    torch_dtype: torch.dtype,
    first_shard: int,
    recipe: Preprocessing,
    readout: Readout,
) -> int:
    """Run the remaining shards' images through the model, writing each shard when full."""
    import torch
    from torch.utils.data import DataLoader

    from nacosae.models.vision import layer_activations

    spans = builder.spans
    start = spans[first_shard][0]
    positions = list(range(start, len(listing)))
    workers = default_workers() if request.workers is None else request.workers
    loader = DataLoader(
        ControlImages(listing, positions, recipe),
        batch_size=request.batch_size,
        num_workers=workers,
        pin_memory=device.startswith("cuda"),
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    store_dtype = getattr(torch, request.dtype)
    shard = first_shard
    rows: list[torch.Tensor] = []
    labels: list[int] = []
    skipped: list[str] = []
    with progress.progress_bar("img") as bar:
        task = bar.add_task(f"{request.model} {request.layer}", total=len(listing), completed=start)
        for images, batch_positions, ok in loader:
            images = images.to(device, dtype=torch_dtype, non_blocking=True)
            try:
                acts = layer_activations(model, request.layer, images, readout)
            except torch.OutOfMemoryError as exc:
                raise NacosaeError(
                    f"out of memory at batch size {request.batch_size}: use a smaller "
                    "--batch-size or --dtype float16"
                ) from exc
            acts = acts.to("cpu", dtype=store_dtype)
            for j, position in enumerate(batch_positions.tolist()):
                if ok[j]:
                    rows.append(acts[j])
                    labels.append(listing.labels[position])
                else:
                    skipped.append(listing.files[position])
                if position + 1 == spans[shard][1]:
                    _flush(builder, shard, rows, labels, skipped, acts.shape[1], store_dtype)
                    shard += 1
                    rows, labels, skipped = [], [], []
            bar.advance(task, len(batch_positions))
    return len(positions)


def _flush(
    builder: StoreBuilder,
    shard: int,
    rows: list[torch.Tensor],
    labels: list[int],
    skipped: list[str],
    n_units: int,
    dtype: torch.dtype,
) -> None:
    import torch

    block = torch.stack(rows) if rows else torch.empty(0, n_units, dtype=dtype)
    builder.write_shard(shard, block, labels, skipped)


def model_preprocessing(
    model: nn.Module,
    image_size: int | None = None,
    mean: Triple | None = None,
    std: Triple | None = None,
) -> Preprocessing:
    """The model's own input recipe with the user's overrides."""
    from nacosae.models.vision import own_preprocessing

    return own_preprocessing(model).overridden(image_size, mean, std)


def open_controls(
    controls_root: Path, model: str, layer: str, readout: Readout | None = None, verify: bool = True
) -> ControlStore:
    """The complete store for model/layer (and readout), or an error naming the command that
    builds it."""
    from nacosae.errors import ControlsMissing

    readout = readout or Readout()
    directory = store_dir(controls_root, model, layer, readout.variant)
    if not (directory / "index.json").is_file():
        extra = (" --token-pooling mean" if readout.tokens == "mean" else "") + (
            f" --sae {readout.sae.path}" if readout.sae else ""
        )
        raise ControlsMissing(
            f"no control activations for {model} {layer}"
            + (f" ({readout.variant})" if readout.variant else "")
            + f": run `nacosae controls --model {model} --layer {layer}{extra}` first"
        )
    return ControlStore(directory, verify=verify)
