"""The model side of a control store build: the explained model and the activations of shards.

`ControlsSide` loads the model through a ModelCache and computes one or more shards of the
image listing. `nacosae controls` uses it in-process; with `--ray` every worker actor holds one
(built from the picklable `ControlsJob`, models/sides.py) and computes whole shards, which the
driver writes in order. A shard is cut into the same batches either way, so its activations are
the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, ClassVar

from nacosae.errors import NacosaeError
from nacosae.models.cache import ModelCache, ModelHandle
from nacosae.models.preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch

    from nacosae.controls.request import ControlsRequest
    from nacosae.data.images import ImageFolderListing
    from nacosae.models.units import Readout


def default_workers() -> int:
    """Decoding processes beside the model: one per core but one, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


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
    lead_methods: ClassVar[tuple[str, ...]] = ()

    def key(self) -> str:
        """The same for two builds that compute the same activations of the same files."""
        from nacosae.store.concepts import content_key

        settings = {k: str(v) for k, v in asdict(self.request).items()}
        for per_run in ("controls_root", "overwrite", "workers", "ray", "ray_workers"):
            settings.pop(per_run)
        return content_key({"controls": settings, "files": self.listing.files, "spans": self.spans})

    def build(self, cache: ModelCache) -> ControlsSide:
        from nacosae.models.devices import resolve_device

        return ControlsSide(self, cache, resolve_device(self.request.device))


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


class ControlsSide:
    """The explained model of a build on `device`, with its input recipe and unit readout."""

    def __init__(self, job: ControlsJob, cache: ModelCache, device: str) -> None:
        import torch

        from nacosae.models.devices import compute_dtype
        from nacosae.models.vision import (
            count_units,
            load_vision,
            model_preprocessing,
            resolve_layer,
            vision_spec,
        )

        request = job.request
        if not job.listing.root.is_dir():  # a Ray node without the images
            raise NacosaeError(
                f"the image folder {job.listing.root} is not readable on {os.uname().nodename}: "
                "`controls --ray` reads the images where it runs, so every node needs them at "
                "the same path (a shared filesystem)"
            )
        self.job, self.device = job, device
        self.readout: Readout = request.readout()
        run_dtype = compute_dtype("vision", device, request.dtype)
        self.dtype = getattr(torch, run_dtype)
        spec = vision_spec(request.model, request.weights, device, run_dtype)
        self.vision = ModelHandle(cache, spec, load_vision)
        with self.vision.use() as model:
            resolve_layer(model, request.layer, request.model)
            self.recipe = model_preprocessing(model, request.image_size, request.mean, request.std)
            self.weights_id: str = model.nacosae_weights_id
            self.n_units = count_units(model, request.layer, device, self.dtype, self.readout)

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
            ControlImages(listing, positions, self.recipe.transform(), self.recipe.size),
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
