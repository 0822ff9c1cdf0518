"""The control images that drive a unit most (or least), straight from its control store."""

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
