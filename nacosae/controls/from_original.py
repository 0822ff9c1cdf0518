"""`nacosae controls --from-original DIR`: the original project's control activations as a store.

The original (`src/calculate_control_activations.py`) saved one `torch.save`d tensor per control
class, `DIR/<class folder>.pt`, `[images, units]` (a 4-D layer output is averaged over H, W and
a token sequence gives its class token before saving, as our pooling does), or a folder per
class with one tensor per image (`DIR/<class folder>/<image>.pt`). Class folders are the
first WordNet synonym of an ImageNet class (`data/imagenet.py: original_folders`), so the WordNet
id and our class order come from the name; other names keep their sorted order.

Files are read with `torch.load(weights_only=True, map_location="cpu")`: a file that holds
anything but one plain tensor is refused, never unpickled in full. The store has no image
files: its dataset is the folder (identity: the names and sizes of the files), its
preprocessing the original's (Resize(224), CenterCrop(224), ImageNet mean and std), so
`top-images` shows class and row, and `explain --preset line` reads it as it is.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae import progress
from nacosae.errors import ImagesNotFound, NacosaeError
from nacosae.store.activations import StoreBuilder, shard_spans, store_dir

if TYPE_CHECKING:
    import torch

ORIGINAL_PREPROCESSING_SOURCE = "the original project's (Resize(224), CenterCrop(224))"
KEPT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class OriginalClass:
    folder: str  # the original's name: file stem or folder name
    files: tuple[Path, ...]  # one file of [images, units], or one file per image
    per_image: bool


@dataclass
class ImportResult:
    directory: Path
    index: dict[str, Any]
    already_complete: bool


def list_original(directory: Path) -> list[OriginalClass]:
    """The classes under `directory` in ImageNet label order (others sorted after them)."""
    from nacosae.data.imagenet import class_for_original_folder

    if not directory.is_dir():
        raise ImagesNotFound(f"{directory} is not a folder of the original's .pt activations")
    classes = []
    for entry in sorted(directory.iterdir()):
        if entry.is_file() and entry.suffix == ".pt":
            classes.append(OriginalClass(entry.stem, (entry,), False))
        elif entry.is_dir():
            files = tuple(sorted(entry.glob("*.pt")))
            if files:
                classes.append(OriginalClass(entry.name, files, True))
    if not classes:
        raise ImagesNotFound(
            f"no .pt files in {directory}: give the original's control_activations/<model>/"
            "<layer> folder"
        )

    def label_order(item: OriginalClass) -> tuple[float, str]:
        found = class_for_original_folder(item.folder)
        return (found.index if found else float("inf"), item.folder)

    return sorted(classes, key=label_order)


def load_plain_tensor(path: Path) -> torch.Tensor:
    """The one tensor a file holds, on the CPU; NacosaeError for anything else."""
    import pickle

    import torch

    try:
        value = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NacosaeError(
            f"{path} is not a plain tensor file ({reason[:160]}): only torch.save(tensor) "
            "files are imported"
        ) from exc
    if not isinstance(value, torch.Tensor):
        raise NacosaeError(
            f"{path} holds a {type(value).__name__}, not a tensor: only torch.save(tensor) "
            "files are imported"
        )
    return value


def class_rows(item: OriginalClass) -> torch.Tensor:
    """`[images, units]` of one class, pooled as the original pooled a layer's output."""
    import torch

    from nacosae.models.units import pool

    if item.per_image:
        tensors = [load_plain_tensor(f) for f in item.files]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise NacosaeError(f"the files of {item.folder}/ differ in shape: {sorted(shapes)}")
        return pool(torch.stack(tensors))
    tensor = load_plain_tensor(item.files[0])
    if tensor.dim() < 2:
        raise NacosaeError(
            f"{item.files[0]} has shape {tuple(tensor.shape)}; a class file is [images, units]"
        )
    return pool(tensor)


def import_original(
    directory: Path,
    model: str,
    layer: str,
    weights: str,
    controls_root: Path,
    overwrite: bool = False,
    shard_rows: int = 4096,
) -> ImportResult:
    """Write the store of `model` / `layer` from the original's files under `directory`."""
    from nacosae.models.preprocessing import DEFAULT
    from nacosae.models.units import Readout
    from nacosae.models.vision import declared_weights_id

    directory = Path(directory).expanduser()
    listing = list_original(directory)
    first = class_rows(listing[0])
    n_units, dtype = int(first.shape[1]), _kept_dtype(first)
    expected = _layer_units(model, layer)
    if expected is not None and expected != n_units:
        raise NacosaeError(
            f"{listing[0].files[0]} has {n_units} units, but {model} {layer} has {expected}: "
            "give the --model and --layer the files were computed for"
        )
    rows = _read_classes(listing, first)
    recipe = replace(DEFAULT, source=ORIGINAL_PREPROCESSING_SOURCE)
    readout = Readout()
    identity = {
        "model": model,
        "layer": layer,
        "weights": declared_weights_id(model, weights),
        "dataset": f"original:{_fingerprint(directory, listing)}",
        "dtype": dtype,
        "preprocessing": recipe.describe(),
        "units": readout.identity(),
    }
    total = sum(int(r.shape[0]) for r in rows)
    spans = shard_spans(total, shard_rows)
    details = {
        "dataset_root": None,
        "imported_from": str(directory),
        "dataset_images": total,
        "pooling": readout.describe(),
        "preprocessing_recipe": recipe.to_json(),
        "sae": None,
        "classes": [_class_entry(i, c) for i, c in enumerate(listing)],
    }
    target = store_dir(controls_root, model, layer, readout.variant)
    builder = StoreBuilder(target, identity, n_units, spans, details)
    done = builder.begin(overwrite=overwrite)
    if builder.complete:
        return ImportResult(builder.directory, builder.index, True)
    import torch

    values = torch.cat(rows).to(getattr(torch, dtype))
    labels = torch.cat([torch.full((len(r),), c, dtype=torch.int32) for c, r in enumerate(rows)])
    for i in range(done, len(spans)):
        start, stop = spans[i]
        builder.write_shard(i, values[start:stop], labels[start:stop].tolist(), [])
    index = builder.finish([c.folder for c in listing])
    return ImportResult(builder.directory, index, False)


def _read_classes(listing: list[OriginalClass], first: torch.Tensor) -> list[torch.Tensor]:
    """Every class's rows (the first already read), with a progress bar; one width for all."""
    rows = [first]
    with progress.progress_bar("class") as bar:
        task = bar.add_task("reading the original's files", total=len(listing), completed=1)
        for item in listing[1:]:
            values = class_rows(item)
            if values.shape[1] != first.shape[1]:
                raise NacosaeError(
                    f"{item.files[0]} has {values.shape[1]} units, {listing[0].files[0]} "
                    f"{first.shape[1]}: the files are of different layers"
                )
            rows.append(values)
            bar.advance(task, 1)
    return rows


def _kept_dtype(values: torch.Tensor) -> str:
    name = str(values.dtype).removeprefix("torch.")
    if name in KEPT_DTYPES:
        return name
    progress.warn(f"the original's activations are {name}; the store keeps them as float32")
    return "float32"


def _layer_units(model: str, layer: str) -> int | None:
    """The layer's unit count from the architecture (random weights, no download); None for
    models built elsewhere (timm:, hf:), whose files are then trusted."""
    import torch

    from nacosae.models import sources
    from nacosae.models.vision import count_units, model_info, resolve_layer

    if sources.is_external(model):
        return None
    network = model_info(model).builder().eval()
    resolve_layer(network, layer, model)
    with torch.inference_mode():
        return count_units(network, layer, "cpu", torch.float32)


def _class_entry(index: int, item: OriginalClass) -> dict[str, Any]:
    from nacosae.data.imagenet import class_for_original_folder

    found = class_for_original_folder(item.folder)
    return {
        "index": index,
        "wnid": found.wnid if found else None,
        "folder": item.folder,
        "label": found.label if found else item.folder,
        "concept": found.concept if found else item.folder.replace("_", " "),
    }


def _fingerprint(directory: Path, listing: list[OriginalClass]) -> str:
    """The files' relative names and sizes: what identifies the imported dataset."""
    digest = hashlib.sha256()
    for item in listing:
        for path in item.files:
            digest.update(
                f"{path.relative_to(directory).as_posix()}:{path.stat().st_size};".encode()
            )
    return digest.hexdigest()[:16]
