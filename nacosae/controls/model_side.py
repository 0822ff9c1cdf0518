"""The model side of a control store build: the explained model and the activations of shards.

`ControlsModel` loads the model through a ModelCache and computes one or more shards of the
image listing. `nacosae controls` uses it in-process; with `--ray` every worker actor holds one
(built from the picklable `ControlsJob`) and computes whole shards, which the driver writes in
order. A shard is cut into the same batches either way, so its activations are the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from nacosae.errors import NacosaeError
from nacosae.models.cache import ModelCache, ModelHandle, ModelSpec
from nacosae.models.preprocessing import Preprocessing, Triple
from nacosae.models.residency import OffloadMode

if TYPE_CHECKING:
    import torch
    from torch import nn

    from nacosae.controls.build import ControlsRequest
    from nacosae.data.images import ImageFolderListing
    from nacosae.models.units import Readout

DType = Literal["float16", "float32"]


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


def model_preprocessing(
    model: nn.Module,
    image_size: int | None = None,
    mean: Triple | None = None,
    std: Triple | None = None,
) -> Preprocessing:
    """The model's own input recipe with the user's overrides."""
    from nacosae.models.vision import own_preprocessing

    return own_preprocessing(model).overridden(image_size, mean, std)


def shard_batches(
    spans: list[tuple[int, int]], first: int, stop: int, batch_size: int
) -> list[list[int]]:
    """Batches (indices from the start of shard `first`) that never cross a shard's end, so a
    shard's activations do not depend on which shards are computed with it."""
    base = spans[first][0]
    return [
        list(range(start - base, min(start + batch_size, end) - base))
        for begin, end in spans[first:stop]
        for start in range(begin, end, batch_size)
    ]


@dataclass(frozen=True)
class ControlsJob:
    """What the model side of a build needs, picklable: the request and the image listing (the
    images are read where the work runs, so every Ray node must see them at the same path)."""

    request: ControlsRequest
    listing: ImageFolderListing
    spans: list[tuple[int, int]]
    needs_llm = False

    def shippable(self) -> ControlsJob:
        return self

    def key(self) -> str:
        """The same for two builds that compute the same activations of the same files."""
        from nacosae.store.concepts import content_key

        settings = {k: str(v) for k, v in asdict(self.request).items()}
        for per_run in ("controls_root", "overwrite", "workers", "ray", "ray_workers"):
            settings.pop(per_run)
        return content_key({"controls": settings, "files": self.listing.files, "spans": self.spans})

    def build(self, cache: ModelCache, with_llm: bool = False) -> ControlsModel:
        return ControlsModel(self, cache, resolve_device(self.request.device))


@dataclass(frozen=True)
class ControlsFacts:
    """What the driver needs from the loaded model to name and check the store."""

    weights_id: str
    recipe: Preprocessing
    n_units: int
    device: str

    @property
    def keys(self) -> tuple[str, str, int]:
        """What every Ray worker must agree on."""
        return self.weights_id, self.recipe.describe(), self.n_units


@dataclass
class ShardActivations:
    """One shard: the activations of its readable images (store dtype), their class labels,
    and the files that could not be read."""

    activations: torch.Tensor
    labels: list[int]
    skipped: list[str]


class ControlsModel:
    """The explained model of a build on `device`, with its input recipe and unit readout."""

    def __init__(self, job: ControlsJob, cache: ModelCache, device: str) -> None:
        import torch

        from nacosae.models.vision import count_units, resolve_layer

        request = job.request
        if not job.listing.root.is_dir():  # a Ray node without the images
            raise NacosaeError(
                f"the image folder {job.listing.root} is not readable on {os.uname().nodename}: "
                "`controls --ray` reads the images where it runs, so every node needs them at "
                "the same path (a shared filesystem)"
            )
        self.job, self.device = job, device
        self.readout: Readout = request.readout()
        run_dtype = compute_dtype(request.dtype, device)
        self.dtype = getattr(torch, run_dtype)
        spec = vision_spec(request.model, request.weights, device, run_dtype)
        self.vision = ModelHandle(cache, spec, load_vision)
        with self.vision.use() as model:
            resolve_layer(model, request.layer, request.model)
            self.recipe = model_preprocessing(model, request.image_size, request.mean, request.std)
            self.weights_id: str = model.nacosae_weights_id
            self.n_units = count_units(model, request.layer, device, self.dtype, self.readout)

    def load_llm(self) -> None:
        """A control store build has no LLM."""

    def facts(self) -> ControlsFacts:
        return ControlsFacts(self.weights_id, self.recipe, self.n_units, self.device)

    def activations_of_shard(self, shard: int, decoders: int) -> ShardActivations:
        """One whole shard (a Ray worker's task)."""
        return next(self.shards(shard, shard + 1, decoders))[1]

    def shards(
        self,
        first: int,
        stop: int,
        decoders: int,
        advance: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[int, ShardActivations]]:
        """Shards `first` to `stop - 1` in order, each when its last image has run; images are
        decoded by `decoders` processes while the model runs (`advance(n)` after each batch)."""
        import torch
        from torch.utils.data import DataLoader

        from nacosae.data.images import ControlImages
        from nacosae.models.vision import layer_activations

        request, listing, spans = self.job.request, self.job.listing, self.job.spans
        positions = list(range(spans[first][0], spans[stop - 1][1]))
        loader = DataLoader(
            ControlImages(listing, positions, self.recipe),
            batch_sampler=shard_batches(spans, first, stop, request.batch_size),
            num_workers=decoders,
            pin_memory=self.device.startswith("cuda"),
            prefetch_factor=4 if decoders else None,
        )
        store_dtype = getattr(torch, request.dtype)
        shard, part = first, _Shard()
        with self.vision.use() as model:
            for images, batch_positions, ok in loader:
                images = images.to(self.device, dtype=self.dtype, non_blocking=True)
                try:
                    acts = layer_activations(model, request.layer, images, self.readout)
                except torch.OutOfMemoryError as exc:
                    raise NacosaeError(
                        f"out of memory at batch size {request.batch_size}: use a smaller "
                        "--batch-size or --dtype float16"
                    ) from exc
                acts = acts.to("cpu", dtype=store_dtype)
                for j, position in enumerate(batch_positions.tolist()):
                    if ok[j]:
                        part.rows.append(acts[j])
                        part.labels.append(listing.labels[position])
                    else:
                        part.skipped.append(listing.files[position])
                if advance is not None:
                    advance(len(batch_positions))
                if batch_positions[-1] + 1 == spans[shard][1]:  # batches end at shard ends
                    yield shard, part.done(acts.shape[1], store_dtype)
                    shard, part = shard + 1, _Shard()


@dataclass
class _Shard:
    """The rows of a shard being filled."""

    rows: list[torch.Tensor] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def done(self, n_units: int, dtype: torch.dtype) -> ShardActivations:
        import torch

        block = torch.stack(self.rows) if self.rows else torch.empty(0, n_units, dtype=dtype)
        return ShardActivations(block, self.labels, self.skipped)
