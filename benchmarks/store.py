"""Reading one unit's control activations: nacosae's store against the original layout.

Store: 50,000 images x 2,048 units float16 (ResNet-50 avgpool on ImageNet val), written with
nacosae's StoreBuilder. Original layout: one `torch.save` file per class (1,000 files of
[50, 2,048]); reading a unit means loading every file and indexing the unit.
Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nacosae.store.activations import ControlStore, StoreBuilder, shard_spans


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def build_store(directory: Path, acts: torch.Tensor, classes: int, shard_size: int) -> None:
    n_images, n_units = acts.shape
    per_class = n_images // classes
    labels = [i // per_class for i in range(n_images)]
    identity = {"model": "bench", "layer": "avgpool", "weights": "w", "dataset": "d"}
    identity.update(dtype="float16", preprocessing="none", units={"tokens": "cls", "sae": None})
    details = {
        "pooling": "mean",
        "classes": [
            {"index": c, "wnid": None, "folder": f"c{c}", "label": f"c{c}"} for c in range(classes)
        ],
    }
    builder = StoreBuilder(directory, identity, n_units, shard_spans(n_images, shard_size), details)
    builder.begin()
    for i, (a, b) in enumerate(builder.spans):
        builder.write_shard(i, acts[a:b], labels[a:b], [])
    builder.finish([c["folder"] for c in details["classes"]])


def timed_reads(read, units: list[int]) -> list[float]:
    seconds = []
    for u in units:
        start = time.perf_counter()
        read(u)
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--units", type=int, default=2_048)
    parser.add_argument("--classes", type=int, default=1_000)
    parser.add_argument("--reads", type=int, default=200)
    args = parser.parse_args()

    torch.manual_seed(0)
    acts = torch.randn(args.images, args.units).half()
    probe = torch.randint(0, args.units, (args.reads,)).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        build_store(root / "store", acts, args.classes, shard_size=4096)
        emit(metric="store_build_seconds", value=round(time.perf_counter() - start, 3))

        start = time.perf_counter()
        store = ControlStore(root / "store", verify=True)
        emit(metric="store_open_verified_seconds", value=round(time.perf_counter() - start, 4))
        start = time.perf_counter()
        store = ControlStore(root / "store", verify=False)
        emit(metric="store_open_size_checked_seconds", value=round(time.perf_counter() - start, 4))

        assert torch.equal(store.unit(probe[0]), acts[:, probe[0]])
        store.unit(probe[0])  # warm
        ours = timed_reads(store.unit, probe)
        ours_ms = statistics.median(ours) * 1e3
        emit(
            metric="unit_read_ms_warm_median",
            layout="nacosae",
            value=round(ours_ms, 4),
            p95=round(sorted(ours)[int(0.95 * len(ours))] * 1e3, 4),
            shape=[args.images],
            reads=len(ours),
        )

        per_class = args.images // args.classes
        original = root / "original"
        original.mkdir()
        for c in range(args.classes):
            torch.save(acts[c * per_class : (c + 1) * per_class].clone(), original / f"{c}.pt")

        def original_read(u: int) -> torch.Tensor:
            parts = [
                torch.load(original / f"{c}.pt", weights_only=True)[:, u]
                for c in range(args.classes)
            ]
            return torch.cat(parts)

        assert torch.equal(original_read(probe[0]), acts[:, probe[0]])  # also warms the cache
        theirs = timed_reads(original_read, probe[:10])
        theirs_ms = statistics.median(theirs) * 1e3
        emit(
            metric="unit_read_ms_warm_median",
            layout="torch.save per class",
            value=round(theirs_ms, 3),
            reads=len(theirs),
        )
        emit(metric="unit_read_speedup", value=round(theirs_ms / ours_ms, 1), target=100)


if __name__ == "__main__":
    main()
