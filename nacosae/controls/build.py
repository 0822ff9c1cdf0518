"""Build the control activation store: one pass of the control images through the model.

Images are decoded and resized in DataLoader workers while the model runs, so decoding
overlaps compute. Activations of every unit of the layer are written shard by shard; an
interrupted build resumes at the first missing shard. With `--ray` the shards are computed by
the workers of a Ray cluster and written here, in order, into the same store.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae import progress
from nacosae.config import writable_folder
from nacosae.controls.model_side import (
    ControlsFacts,
    ControlsJob,
    ShardActivations,
    default_workers,
)
from nacosae.controls.request import ControlsRequest
from nacosae.data.images import ImageFolderListing, list_image_folder
from nacosae.errors import ImagesNotFound, NacosaeError
from nacosae.models.cache import ModelCache
from nacosae.models.preprocessing import check_image_size
from nacosae.models.sides import InProcess
from nacosae.models.units import Readout
from nacosae.store.activations import ControlStore, StoreBuilder, shard_spans, store_dir
from nacosae.store.atomic import exclusive

if TYPE_CHECKING:
    from nacosae.distributed.pool import WorkerPool
    from nacosae.models.sides import Executor


@dataclass
class ControlsResult:
    directory: Path
    index: dict[str, Any]
    already_complete: bool
    images_processed: int


def build_controls(request: ControlsRequest, cache: ModelCache) -> ControlsResult:
    """Build (or resume, or keep) the store for `request.model` / `request.layer`: here, or
    with `request.ray` on the workers of a Ray cluster (shards computed where a worker is free,
    written here in order)."""
    from nacosae.distributed.cluster import check_ray_options

    if request.batch_size < 1:
        raise NacosaeError("--batch-size must be at least 1")
    if request.shard_size < 1:
        raise NacosaeError("--shard-size must be at least 1")
    check_image_size(request.image_size)
    check_ray_options(request.ray, request.ray_workers)
    writable_folder(request.controls_root, "the control store folder (NACOSAE_HOME/controls)")
    listing = list_image_folder(request.images)
    job = ControlsJob(request, listing, shard_spans(len(listing), request.shard_size))
    target = store_dir(request.controls_root, request.model, request.layer, "")
    locks = Path(request.controls_root).parent / ".locks"  # beside the stores, not among them
    lock = locks / f"controls--{target.parent.name}--{target.name}.lock"
    with exclusive(lock):  # two builds of one model/layer: the second waits, then reuses
        return _build(request, cache, listing, job)


def _build(
    request: ControlsRequest, cache: ModelCache, listing: ImageFolderListing, job: ControlsJob
) -> ControlsResult:
    with _executor(job, cache) as executor:
        builder = _store_builder(request, listing, job.spans, executor.facts())
        target = builder.directory
        if request.overwrite and (target / "index.json").is_file():
            # the new store is built beside the old one, which stays until it is complete
            builder.directory = target.with_name(f"{target.name}.overwrite")
        done = builder.begin(overwrite=request.overwrite)
        if builder.complete:
            return ControlsResult(builder.directory, builder.index, True, 0)
        if done:
            progress.info(f"resuming: {done} of {len(job.spans)} shards already written")
        processed = 0
        if done < len(job.spans):  # else it was killed while writing the last files
            processed = _write_shards(request, builder, executor, done)
    if builder.next_row() == 0:
        builder.abandon()
        raise ImagesNotFound(
            f"none of the {len(listing):,} image files under {listing.root} could be read (e.g. "
            f"{listing.files[0]}): check that they are images, then rerun"
        )
    index = builder.finish([c.folder for c in listing.classes])
    if builder.directory != target:
        _swap_in(builder.directory, target)
        builder.directory = target
    if index["skipped"]:
        names = ", ".join(index["skipped"][:5]) + (" ..." if len(index["skipped"]) > 5 else "")
        progress.warn(
            f"{len(index['skipped'])} unreadable images skipped ({names}); "
            f"all are listed under 'skipped' in {builder.directory / 'index.json'}"
        )
    return ControlsResult(builder.directory, index, False, processed)


def _swap_in(new: Path, target: Path) -> None:
    """Replace the store at `target` with the complete one at `new` (two renames: at every
    moment one complete store is in place or beside it)."""
    import shutil

    old = target.with_name(f"{target.name}.replaced")
    shutil.rmtree(old, ignore_errors=True)
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def _executor(job: ControlsJob, cache: ModelCache) -> Iterator[Executor]:
    """The model here, or on the workers of a Ray cluster (reached before any folder is made;
    ended afterwards, unless they belong to `nacosae serve`)."""
    request = job.request
    if request.ray is None:
        yield InProcess(job, cache)
        return
    from nacosae.distributed.cluster import connect
    from nacosae.distributed.pool import WorkerPool

    with WorkerPool.running(connect(request.ray), job, request.ray_workers) as pool:
        yield pool


def _store_builder(
    request: ControlsRequest,
    listing: ImageFolderListing,
    spans: list[tuple[int, int]],
    facts: ControlsFacts,
) -> StoreBuilder:
    """The store to write: its identity (what a later request must match) and its layout."""
    readout = request.readout()
    identity = {
        "model": request.model,
        "layer": request.layer,
        "weights": facts.weights_id,
        "dataset": listing.dataset_id(),
        "dtype": request.dtype,
        "preprocessing": facts.recipe.describe(),
        "units": readout.identity(),
    }
    details = {
        "dataset_root": str(listing.root),
        "dataset_images": len(listing),
        "pooling": readout.describe(),
        "preprocessing_recipe": facts.recipe.to_json(),
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
    directory = store_dir(request.controls_root, request.model, request.layer, readout.variant)
    return StoreBuilder(directory, identity, facts.n_units, spans, details)


def _write_shards(
    request: ControlsRequest, builder: StoreBuilder, executor: Executor, first: int
) -> int:
    """Compute shards `first`.. (here, or on the Ray workers, which finish in any order) and
    write each as soon as the shards before it are written; returns the images run."""
    spans = builder.spans
    total, start = spans[-1][1], spans[first][0]
    with progress.progress_bar("img") as bar:
        task = bar.add_task(f"{request.model} {request.layer}", total=total, completed=start)
        here = isinstance(executor, InProcess)  # progress by batch here, else by shard written
        if isinstance(executor, InProcess):  # one loader over every shard: decoding never waits
            decoders = default_workers() if request.workers is None else request.workers
            advance = lambda n: bar.advance(task, n)  # noqa: E731
            results = executor.side.shards(first, len(spans), decoders, advance)
        else:
            results = _shards_on_workers(executor, request, first, len(spans))  # type: ignore[arg-type]
        waiting: dict[int, ShardActivations] = {}
        written = first
        for shard, result in results:
            waiting[shard] = result
            while written in waiting:
                done = waiting.pop(written)
                builder.write_shard(written, done.activations, done.labels, done.skipped)
                if not here:
                    bar.advance(task, spans[written][1] - spans[written][0])
                written += 1
    return total - start


def _shards_on_workers(
    pool: WorkerPool, request: ControlsRequest, first: int, stop: int
) -> Iterator[tuple[int, ShardActivations]]:
    """Each shard a task for whichever worker is free; each worker decodes with its share of
    the cluster's CPUs unless --workers says how many."""
    decoders = request.workers
    if decoders is None:
        decoders = min(8, max(0, pool.cluster.cpus() // len(pool.slots) - 1))
    tasks = [(shard, decoders) for shard in range(first, stop)]
    for index, result in pool.completed("activations_of_shard", tasks):
        yield first + index, result


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
