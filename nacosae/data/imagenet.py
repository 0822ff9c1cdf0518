"""ImageNet-1k: the 1,000-class table, and parquet files -> an ImageFolder tree.

The hub's gated dataset `ILSVRC/imagenet-1k` stores each split as parquet files
(`data/<split>-NNNNN-of-NNNNN.parquet`) with an `image` struct (`bytes`, `path`) and an integer
`label` in the standard ILSVRC-2012 order (sorted WordNet ids). Extraction writes the image bytes
exactly as stored to `DIR/<class folder>/<original file name>`, skips files already written,
and writes `DIR/classes.json` last, saying whether the expected count was reached.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nacosae import progress
from nacosae.errors import NacosaeError
from nacosae.store.atomic import atomic_write_json

REPO_ID = "ILSVRC/imagenet-1k"
SPLIT_SIZES = {"validation": 50_000, "train": 1_281_167}
CLASSES_FILE = "classes.json"


class ParquetError(NacosaeError):
    """A parquet file that is not ImageNet-1k as the hub stores it."""


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    folder: str
    label: str


def _timm_info_dir() -> Path:
    """timm ships the ILSVRC-2012 synset list and WordNet lemmas as data files."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise NacosaeError("the timm package is missing: reinstall nacosae (uv sync)")
    return Path(spec.submodule_search_locations[0]) / "data" / "_info"


def folder_name(label: str) -> str:
    """First synonym of a WordNet label, lower-case, with only [a-z0-9_]."""
    first = label.split(",")[0].strip().lower()
    return re.sub(r"[^a-z0-9]+", "_", first).strip("_") or "class"


def imagenet_classes() -> list[ImageNetClass]:
    """The 1,000 classes in label order; duplicate first synonyms get their wnid appended."""
    info = _timm_info_dir()
    wnids = (info / "imagenet_synsets.txt").read_text().split()
    lemma_lines = (info / "imagenet_synset_to_lemma.txt").read_text().splitlines()
    lemmas = dict(line.split("\t", 1) for line in lemma_lines if "\t" in line)
    labels = [lemmas[w].strip() for w in wnids]
    names = [folder_name(label) for label in labels]
    repeated = {n for n, count in Counter(names).items() if count > 1}
    return [
        ImageNetClass(i, w, f"{n}_{w}" if n in repeated else n, label)
        for i, (w, n, label) in enumerate(zip(wnids, names, labels, strict=True))
    ]


@dataclass
class ExtractionReport:
    written: int
    already_present: int
    total: int
    expected: int | None
    per_class: dict[str, int]

    @property
    def complete(self) -> bool:
        return self.expected is None or self.total >= self.expected

    @property
    def missing(self) -> int:
        return 0 if self.expected is None else max(0, self.expected - self.total)


def _check_schema(path: Path, schema: Any) -> None:
    import pyarrow as pa

    names = set(schema.names)
    problem = None
    if not {"image", "label"} <= names:
        problem = f"columns {sorted(names)}"
    else:
        image = schema.field("image").type
        if not pa.types.is_struct(image) or {
            image.field(i).name for i in range(image.num_fields)
        } < {
            "bytes",
            "path",
        }:
            problem = f"image column of type {image}"
        elif not pa.types.is_integer(schema.field("label").type):
            problem = f"label column of type {schema.field('label').type}"
    if problem:
        raise ParquetError(
            f"{path.name} is not an ImageNet-1k parquet file ({problem}; expected an image "
            "struct with bytes and path, and an integer label)"
        )


def _safe_file_name(raw: str | None, fallback: str) -> str:
    name = Path(raw or "").name
    if not name or name in (".", "..") or name.startswith("."):
        return fallback
    return name


def write_image_file(path: Path, data: bytes) -> None:
    """Write bytes under a temporary name, then rename: a killed run leaves no partial image."""
    tmp = path.with_name(f".{path.name}.part")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def parquet_files(directory: Path, split: str) -> list[Path]:
    """The split's parquet files under `directory` (searched recursively), sorted by name."""
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise NacosaeError(f"parquet folder {directory} does not exist")
    files = sorted(directory.rglob(f"{split}-*.parquet"), key=lambda p: p.name)
    if not files:
        raise NacosaeError(
            f"no {split}-*.parquet files under {directory}: point --from-parquet at the folder "
            "holding the hub's data/ files"
        )
    return files


def extract(
    files: Iterable[Path],
    out: Path,
    split: str = "validation",
    classes: list[ImageNetClass] | None = None,
) -> ExtractionReport:
    """Lay out the images of `files` as `out/<class folder>/<file name>` and write classes.json."""
    import pyarrow.parquet as pq

    classes = classes or imagenet_classes()
    files = list(files)
    out = Path(out).expanduser()
    for c in classes:
        (out / c.folder).mkdir(parents=True, exist_ok=True)
    rows_total = 0
    for path in files:
        try:
            metadata = pq.ParquetFile(path).metadata
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
            raise ParquetError(f"{path.name} is not a readable parquet file: {exc}") from exc
        rows_total += metadata.num_rows
    written = present = 0
    with progress.progress_bar("img") as bar:
        task = bar.add_task(f"extracting {split}", total=rows_total)
        for path in files:
            reader = pq.ParquetFile(path)
            _check_schema(path, reader.schema_arrow)
            row = 0
            for batch in reader.iter_batches(batch_size=512, columns=["image", "label"]):
                images = batch.column("image")
                blobs = images.field("bytes").to_pylist()
                names = images.field("path").to_pylist()
                for blob, raw_name, label in zip(
                    blobs, names, batch.column("label").to_pylist(), strict=True
                ):
                    if label is None or not 0 <= label < len(classes):
                        raise ParquetError(
                            f"{path.name} row {row}: label {label} is outside 0..{len(classes) - 1}"
                            + (" (the test split has no labels)" if label == -1 else "")
                        )
                    if blob is None:
                        raise ParquetError(f"{path.name} row {row}: the image has no bytes")
                    name = _safe_file_name(raw_name, f"{path.stem}_{row:06d}.JPEG")
                    target = out / classes[label].folder / name
                    try:
                        if target.is_file() and target.stat().st_size == len(blob):
                            present += 1
                        else:
                            write_image_file(target, blob)
                            written += 1
                    except OSError as exc:
                        raise NacosaeError(
                            f"cannot write {target}: {exc.strerror or exc}; free space or fix "
                            "permissions and rerun (images already written are kept)"
                        ) from exc
                    row += 1
                bar.advance(task, batch.num_rows)
    per_class = {c.folder: _count_images(out / c.folder) for c in classes}
    total = sum(per_class.values())
    report = ExtractionReport(written, present, total, SPLIT_SIZES.get(split), per_class)
    atomic_write_json(
        out / CLASSES_FILE,
        {
            "dataset": REPO_ID,
            "split": split,
            "images": total,
            "expected_images": report.expected,
            "complete": report.complete,
            "classes": [asdict(c) for c in classes],
        },
    )
    return report


def _count_images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_classes_json(out: Path) -> dict[str, Any] | None:
    path = Path(out) / CLASSES_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def download_imagenet(
    split: str, out: Path, token: str | None, keep_parquet: bool = True
) -> ExtractionReport:
    """Fetch the split's parquet files from the gated hub dataset and extract them to `out`."""
    from nacosae import hub

    if split not in SPLIT_SIZES:
        raise NacosaeError(
            f"split {split!r} cannot be used: choose validation or train (the test split has no "
            "labels)"
        )
    if token is None and not hub.offline():
        raise NacosaeError(
            f"ImageNet-1k is a gated dataset and no token is set: accept its terms at "
            f"{hub.repo_url(REPO_ID, 'dataset')}, then set HF_TOKEN (environment or .env) or pass "
            "--token"
        )
    snapshot_dir = hub.snapshot(
        REPO_ID, "dataset", token=token, allow_patterns=[f"data/{split}-*.parquet"]
    )
    report = extract(parquet_files(snapshot_dir, split), out, split)
    if not keep_parquet:
        hub.delete_cached(REPO_ID, "dataset")
    return report
