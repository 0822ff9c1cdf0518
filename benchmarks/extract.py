"""ImageNet parquet -> ImageFolder extraction throughput (single process, local parquet).

Writes parquet files in the hub's schema holding N x 100 KB images (random bytes: extraction
never decodes, it writes the stored bytes as they are), then times `nacosae.data.imagenet.extract`
on a fresh tree and on a rerun over the finished tree. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from nacosae import progress
from nacosae.data.imagenet import extract

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_parquets(folder: Path, images: int, files: int, size: int) -> None:
    per_file = images // files
    for f in range(files):
        rows = range(f * per_file, (f + 1) * per_file)
        table = pa.table(
            {
                "image": pa.array(
                    [
                        {"bytes": os.urandom(size), "path": f"ILSVRC2012_val_{i:08d}.JPEG"}
                        for i in rows
                    ],
                    type=IMAGE_TYPE,
                ),
                "label": pa.array([i % 1000 for i in rows], type=pa.int64()),
            }
        )
        pq.write_table(table, folder / f"validation-{f:05d}-of-{files:05d}.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--kb", type=int, default=100)
    args = parser.parse_args()
    progress.configure(quiet=True)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        (root / "pq").mkdir()
        write_parquets(root / "pq", args.images, args.files, args.kb * 1024)
        files = sorted((root / "pq").glob("*.parquet"))
        start = time.perf_counter()
        report = extract(files, root / "val")
        seconds = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "metric": "extract_images_per_s",
                    "value": round(report.written / seconds, 1),
                    "images": report.written,
                    "image_kb": args.kb,
                    "mb_per_s": round(report.written * args.kb / 1024 / seconds, 1),
                    "target": 1000,
                }
            )
        )
        start = time.perf_counter()
        report = extract(files, root / "val")
        seconds = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "metric": "extract_rerun_images_per_s",
                    "value": round(report.already_present / seconds, 1),
                }
            )
        )


if __name__ == "__main__":
    main()
