"""ImageNet-1k: the 1,000-class table, and parquet files -> an ImageFolder tree.

The class table ships with the package (`imagenet_classes.tsv`): label index, WordNet id, the
WordNet label, and a concept name per class, lower case and unambiguous (the label's first
synonym, renamed where that word means something else: "cardigan welsh corgi", not "cardigan").

The hub's gated dataset `ILSVRC/imagenet-1k` stores each split as parquet files
(`data/<split>-NNNNN-of-NNNNN.parquet`) with an `image` struct (`bytes`, `path`) and an integer
`label` in the standard ILSVRC-2012 order (sorted WordNet ids). Extraction checks every file
first, then writes the image bytes exactly as stored to `DIR/<class folder>/<original file
name>` (a class folder is made with its first image, so a partial tree has no empty folders),
skips files already written, and writes `DIR/classes.json` last, saying whether the expected
count was reached. Class folders are WordNet ids by default (`n01440764`), so that
torchvision's `ImageFolder` numbers the classes as the classifiers do; `--layout name` uses the
concept names instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from nacosae import progress
from nacosae.errors import NacosaeError
from nacosae.store.atomic import atomic_write_json

REPO_ID = "ILSVRC/imagenet-1k"
SPLIT_SIZES = {"validation": 50_000, "train": 1_281_167}
CLASSES_FILE = "classes.json"


class ParquetError(NacosaeError):
    """A parquet file that is not ImageNet-1k as the hub stores it."""


CLASS_TABLE = Path(__file__).with_name("imagenet_classes.tsv")
Layout = Literal["wnid", "name"]
LAYOUTS: tuple[Layout, ...] = ("wnid", "name")


@dataclass(frozen=True)
class ImageNetClass:
    index: int
    wnid: str
    folder: str
    label: str  # the WordNet label: synonyms separated by commas
    concept: str  # what the search calls the class: lower case, unambiguous


def folder_name(concept: str) -> str:
    """A concept as a folder name: lower case, only [a-z0-9_] ("crane (bird)" -> "crane_bird")."""
    return re.sub(r"[^a-z0-9]+", "_", concept.lower()).strip("_") or "class"


@cache
def _class_rows() -> tuple[tuple[str, str, str], ...]:
    """(wnid, concept, label) of the 1,000 classes, in label order."""
    rows = []
    for line in CLASS_TABLE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            _index, wnid, concept, label = line.split("\t")
            rows.append((wnid, concept, label))
    return tuple(rows)


def imagenet_classes(layout: Layout = "wnid") -> list[ImageNetClass]:
    """The 1,000 classes in label order, with their folder under `layout`."""
    if layout not in LAYOUTS:
        raise NacosaeError(f"unknown --layout {layout!r}: use wnid or name")
    return [
        ImageNetClass(i, wnid, wnid if layout == "wnid" else folder_name(concept), label, concept)
        for i, (wnid, concept, label) in enumerate(_class_rows())
    ]


@cache
def _concepts_by_wnid() -> dict[str, str]:
    return {wnid: concept for wnid, concept, _ in _class_rows()}


def concept_for_wnid(wnid: str | None) -> str | None:
    """The packaged concept name of an ImageNet class, if `wnid` is one."""
    return _concepts_by_wnid().get(wnid or "")


# the original project's class folders: the label's first synonym, lower case, spaces as "_";
# three synonyms two classes share were renamed there, and only these
ORIGINAL_RENAMED = {
    "n03126707": "crane2",  # the machine; n02012849 (the bird) kept "crane"
    "n02113186": "cardigan_welsh_corgi",  # the dog; n02963159 (the sweater) kept "cardigan"
    "n03710721": "tank_suit",  # n03710637 kept "maillot"
}


@cache
def original_folders() -> dict[str, str]:
    """WordNet id -> the original project's class folder name (the 1,000 names of its
    `control_activations/<model>/<layer>/*.pt` files)."""
    return {
        wnid: ORIGINAL_RENAMED.get(wnid) or label.split(",")[0].strip().lower().replace(" ", "_")
        for wnid, _concept, label in _class_rows()
    }


@cache
def _by_original_folder() -> dict[str, ImageNetClass]:
    folders = original_folders()
    return {folders[c.wnid]: c for c in imagenet_classes()}


def class_for_original_folder(folder: str) -> ImageNetClass | None:
    """The ImageNet class the original project's folder (or `.pt` file) name stands for."""
    return _by_original_folder().get(folder)


def original_concept_for_wnid(wnid: str | None) -> str | None:
    """What the original project called an ImageNet class: its folder name, `_` as a space
    ("crane" and "crane2" kept apart)."""
    folder = original_folders().get(wnid or "")
    return folder.replace("_", " ") if folder else None


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
    layout: Layout = "wnid",
) -> ExtractionReport:
    """Lay out the images of `files` as `out/<class folder>/<file name>` and write classes.json.
    Every file is checked before anything is written, so a bad file leaves no folder behind."""
    classes = imagenet_classes(layout)
    out = Path(out).expanduser()
    existing = read_classes_json(out) if out.is_dir() else None
    if existing and existing.get("layout", "name") != layout:
        raise NacosaeError(
            f"{out} holds a tree laid out by {existing.get('layout', 'name')}: pass --layout "
            f"{existing.get('layout', 'name')} to complete it, or another --out"
        )
    if existing and existing.get("split", split) != split:
        raise NacosaeError(
            f"{out} holds the {existing['split']} split: give the {split} split its own --out"
        )
    files = list(files)
    rows_total = sum(_checked_rows(path, len(classes)) for path in files)
    written = present = 0
    with progress.progress_bar("img") as bar:
        task = bar.add_task(f"extracting {split}", total=rows_total)
        for path in files:
            for target, blob in _images(path, out, classes):
                if target.is_file() and target.stat().st_size == len(blob):
                    present += 1
                else:
                    _write_into_class_folder(target, blob)
                    written += 1
                bar.advance(task, 1)
    per_class = {c.folder: _count_images(out / c.folder) for c in classes}
    per_class = {folder: n for folder, n in per_class.items() if n}
    report = ExtractionReport(
        written, present, sum(per_class.values()), SPLIT_SIZES.get(split), per_class
    )
    atomic_write_json(
        out / CLASSES_FILE,
        {
            "dataset": REPO_ID,
            "split": split,
            "layout": layout,
            "images": report.total,
            "expected_images": report.expected,
            "complete": report.complete,
            "classes": [asdict(c) for c in classes],
        },
    )
    return report


def _checked_rows(path: Path, n_classes: int) -> int:
    """The row count of a parquet file whose schema and labels are ImageNet-1k's."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path)
        _check_schema(path, reader.schema_arrow)
        labels = reader.read(columns=["label"]).column("label")
    except NacosaeError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ParquetError(f"{path.name} is not a readable parquet file: {text}") from exc
    if labels.null_count:
        raise ParquetError(f"{path.name}: {labels.null_count} rows have no label")
    if len(labels):
        low, high = pc.min(labels).as_py(), pc.max(labels).as_py()
        if low < 0 or high >= n_classes:
            bad = low if low < 0 else high
            raise ParquetError(
                f"{path.name}: label {bad} is outside 0..{n_classes - 1}"
                + (" (the test split has no labels)" if bad == -1 else "")
            )
    return reader.metadata.num_rows


def _images(path: Path, out: Path, classes: list[ImageNetClass]) -> Iterable[tuple[Path, bytes]]:
    """(target file, image bytes) for every row of a checked parquet file."""
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=512, columns=["image", "label"]):
        images = batch.column("image")
        blobs = images.field("bytes").to_pylist()
        names = images.field("path").to_pylist()
        for blob, raw_name, label in zip(
            blobs, names, batch.column("label").to_pylist(), strict=True
        ):
            if blob is None:
                raise ParquetError(f"{path.name} row {row}: the image has no bytes")
            name = _safe_file_name(raw_name, f"{path.stem}_{row:06d}.JPEG")
            yield out / classes[label].folder / name, blob
            row += 1


def _write_into_class_folder(target: Path, blob: bytes) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_image_file(target, blob)
    except OSError as exc:
        raise NacosaeError(
            f"cannot write {target}: {exc.strerror or exc}; free space or fix "
            "permissions and rerun (images already written are kept)"
        ) from exc


def _count_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def read_classes_json(out: Path) -> dict[str, Any] | None:
    path = Path(out) / CLASSES_FILE
    if not path.is_file():
        return None
    from nacosae.textfiles import read_json

    found = read_json(path, "the class list")
    if not isinstance(found, dict):
        raise NacosaeError(f"the class list {path} is not a JSON object: remove it and rerun")
    return found


def download_imagenet(
    split: str, out: Path, token: str | None, keep_parquet: bool = True, layout: Layout = "wnid"
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
    report = extract(parquet_files(snapshot_dir, split), out, split, layout)
    if not keep_parquet:
        hub.delete_cached(REPO_ID, "dataset")
    return report
