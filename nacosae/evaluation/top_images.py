"""The control images, or control classes, that drive a unit most (or least), straight from its
control store."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TopImage:
    rank: int
    row: int  # the image's row in the store
    path: Path | None  # None when the dataset is no longer where the store was built from it
    class_folder: str
    concept: str
    activation: float


def image_paths(store: Any) -> list[Path] | None:
    """Each store row's image file: the dataset listed again, unreadable images left out (the
    store's row order); None when the dataset moved or changed."""
    from nacosae.data.images import list_image_folder
    from nacosae.errors import ImagesNotFound

    root = store.index.get("dataset_root")
    if not root:
        return None
    try:
        listing = list_image_folder(Path(root))
    except ImagesNotFound:
        return None
    skipped = set(store.index.get("skipped") or [])
    files = [listing.root / f for f in listing.files if f not in skipped]
    return files if len(files) == store.n_images else None


def top_images(store: Any, neuron: int, k: int = 16, lowest: bool = False) -> list[TopImage]:
    """The `k` control images with the highest (or lowest) activation of `neuron`, best first;
    ties keep row order."""
    import numpy as np

    values = store.unit(neuron).float().numpy()
    order = np.argsort(values if lowest else -values, kind="stable")[: max(0, k)]
    paths = image_paths(store)
    class_of_row = {}
    for c in store.classes:
        for row in range(*c["rows"]):
            class_of_row[row] = c
    found = []
    for rank, row in enumerate(order.tolist(), start=1):
        c = class_of_row.get(row, {})
        found.append(
            TopImage(
                rank=rank,
                row=row,
                path=paths[row] if paths else None,
                class_folder=c.get("folder", "?"),
                concept=c.get("concept") or c.get("label", "?"),
                activation=float(values[row]),
            )
        )
    return found


@dataclass(frozen=True)
class TopClass:
    rank: int
    class_folder: str
    concept: str  # the words the search uses for the class
    mean: float  # the unit's mean activation over the class's control images
    images: int


def top_classes(store: Any, neuron: int, k: int = 16, lowest: bool = False) -> list[TopClass]:
    """The `k` control classes with the highest (or lowest) mean activation of `neuron`: the
    classes the search's initial history starts from (`classes_by_mean`)."""
    from nacosae.data.images import class_concept
    from nacosae.store.activations import classes_by_mean

    store.check_unit(neuron)
    means = store.class_means()[:, neuron].double().numpy()
    found = []
    for rank, index in enumerate(classes_by_mean(means, lowest)[: max(0, k)], start=1):
        c = store.classes[index]
        found.append(
            TopClass(
                rank=rank,
                class_folder=c["folder"],
                concept=class_concept(c["label"], c.get("wnid"), c.get("concept")),
                mean=float(means[index]),
                images=c["rows"][1] - c["rows"][0],
            )
        )
    return found
