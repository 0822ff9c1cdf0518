"""`nacosae controls` throughput against the model's forward-only throughput.

512 generated JPEGs (500x375, like ImageNet validation images) in 8 class folders; resnet18 with
random weights on the CPU. Forward-only: the same images, already preprocessed into tensors, run
through the same model at the same batch size. The ratio shows how well decoding and resizing
are hidden behind compute. With `--ray-workers N`, the same store is built again on a local Ray
cluster of N workers (`controls --ray local`; the cluster's start included) and compared with
the first, tensor by tensor. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from nacosae.controls import ControlsRequest, ControlsResult


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def make_jpegs(root: Path, n: int, classes: int = 8) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    for i in range(n):
        folder = root / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        shifted = np.roll(base, shift=i * 7, axis=1)  # distinct images, photo-like JPEG size
        Image.fromarray(shifted).save(folder / f"img_{i:05d}.JPEG", quality=90)


def forward_only_rate(model: torch.nn.Module, images: Path, batch_size: int) -> float:
    """Images/s of the model alone, on images already decoded and preprocessed."""
    from nacosae.data.images import ControlImages, list_image_folder
    from nacosae.models.preprocessing import DEFAULT
    from nacosae.models.vision import layer_activations

    listing = list_image_folder(images)
    dataset = ControlImages(listing, list(range(len(listing))), DEFAULT.transform(), DEFAULT.size)
    tensors = torch.stack([dataset[i][0] for i in range(len(dataset))])
    layer_activations(model, "avgpool", tensors[:batch_size])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(tensors), batch_size):
        layer_activations(model, "avgpool", tensors[i : i + batch_size])
    return len(tensors) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--shard-size", type=int, default=128)
    parser.add_argument("--ray-workers", type=int, default=0, help="also build on N Ray workers")
    args = parser.parse_args()

    from nacosae import progress
    from nacosae.controls import ControlsRequest, build_controls
    from nacosae.models.cache import ModelCache
    from nacosae.models.vision import load_vision, vision_spec

    progress.configure(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_jpegs(root / "val", args.images)
        cache = ModelCache()
        with cache.use(vision_spec(args.model, "none", "cpu", "float32"), load_vision) as model:
            forward_rate = forward_only_rate(model, root / "val", args.batch_size)
        emit(
            metric="forward_only_images_per_s",
            value=round(forward_rate, 2),
            model=args.model,
            batch_size=args.batch_size,
            threads=torch.get_num_threads(),
        )

        request = ControlsRequest(
            model=args.model,
            layer="avgpool",
            images=root / "val",
            controls_root=root / "controls",
            weights="none",
            batch_size=args.batch_size,
            workers=args.workers,
            device="cpu",
            shard_size=args.shard_size,
        )
        start = time.perf_counter()
        result = build_controls(request, cache)  # the model is already in the cache
        controls_seconds = time.perf_counter() - start
        controls_rate = result.images_processed / controls_seconds
        emit(
            metric="controls_images_per_s",
            value=round(controls_rate, 2),
            workers=request.workers,
            seconds=round(controls_seconds, 2),
        )
        emit(
            metric="controls_over_forward_only",
            value=round(controls_rate / forward_rate, 3),
            target=0.8,
        )
        if args.ray_workers:
            ray_build(request, result, args.ray_workers, controls_seconds)


def ray_build(
    request: ControlsRequest, alone: ControlsResult, workers: int, alone_seconds: float
) -> None:
    """The same store on a local Ray cluster of `workers` workers, timed and compared."""
    import dataclasses
    import os

    from safetensors.torch import load_file

    from nacosae.controls import build_controls
    from nacosae.models.cache import ModelCache

    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    root = request.controls_root.parent / "controls-ray"
    on_ray = dataclasses.replace(request, controls_root=root, ray="local", ray_workers=workers)
    start = time.perf_counter()
    result = build_controls(on_ray, ModelCache())
    seconds = time.perf_counter() - start
    names = [s["file"] for s in result.index["shards"]] + ["units.safetensors"]
    same = all(
        all(torch.equal(a[k], b[k]) for k in a)
        for a, b in (
            (load_file(result.directory / n), load_file(alone.directory / n)) for n in names
        )
    )
    emit(
        metric="controls_ray_local_wall_s",
        value=round(seconds, 2),
        workers=workers,
        shards=len(names) - 1,
        in_process_s=round(alone_seconds, 2),
        same_store=same,
    )


if __name__ == "__main__":
    main()
