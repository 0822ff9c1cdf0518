"""ImageFolder listing and a loader that survives unreadable files.

Rows are ordered by class folder name, then file name (both sorted as strings), so the same
tree always gives the same row order. An image that cannot be decoded is not fatal: it is
reported (`ok=False`) and the caller skips and records it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae.errors import ImagesNotFound

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
)
WNID = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class ControlClass:
    index: int
    folder: str
    label: str
    wnid: str | None
    concept: str  # the words the search uses for the class


def class_concept(label: str, wnid: str | None = None, concept: str | None = None) -> str:
    """A control class as a concept: the name given in classes.json, else the packaged name of
    an ImageNet class, else the label's first synonym (underscores as spaces), lower case."""
    from nacosae.data.imagenet import concept_for_wnid

    found = concept or concept_for_wnid(wnid)
    if found:
        return found
    return " ".join(label.split(",")[0].replace("_", " ").split()).lower()


@dataclass(frozen=True)
class ImageFolderListing:
    """Every image file of a tree, class-major, with its class index."""

    root: Path
    classes: list[ControlClass]
    files: list[str]  # relative paths "<class folder>/<file>"
    labels: list[int]

    def __len__(self) -> int:
        return len(self.files)

    def dataset_id(self) -> str:
        """A fingerprint of the listing (paths and byte sizes) that identifies the dataset."""
        digest = hashlib.sha256()
        for rel in self.files:
            digest.update(rel.encode())
            digest.update(str((self.root / rel).stat().st_size).encode())
        return f"{self.root.name}:{len(self.files)}:sha256={digest.hexdigest()[:16]}"


def _class_metadata(root: Path) -> dict[str, dict[str, Any]]:
    """Optional classes.json (written by `nacosae download imagenet`): folder -> label, wnid."""
    path = root / "classes.json"
    if not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # not JSON, or not UTF-8
        from nacosae import progress

        progress.warn(f"{path} is unreadable ({exc}); the class folders' names are used instead")
        return {}
    if isinstance(entries, dict):
        entries = entries.get("classes", [])
    if not isinstance(entries, list):
        return {}
    return {e["folder"]: e for e in entries if isinstance(e, dict) and "folder" in e}


def list_image_folder(root: Path) -> ImageFolderListing:
    """List `root/<class>/<image>`; clear errors for a missing, empty or flat folder."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise ImagesNotFound(
            f"image folder {root} does not exist: pass --images DIR (an ImageFolder tree "
            "DIR/<class>/<image>)"
        )
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        loose = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in root.iterdir())
        what = "images but no class folders" if loose else "no class folders"
        raise ImagesNotFound(
            f"{root} has {what}: expected an ImageFolder tree {root}/<class>/<image>"
        )
    meta = _class_metadata(root)
    classes: list[ControlClass] = []
    files: list[str] = []
    labels: list[int] = []
    for class_dir in class_dirs:
        names = sorted(
            p.name
            for p in class_dir.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not names:
            continue
        index = len(classes)
        info = meta.get(class_dir.name, {})
        label = str(info.get("label", class_dir.name))
        wnid = info.get("wnid") or (class_dir.name if WNID.fullmatch(class_dir.name) else None)
        classes.append(
            ControlClass(
                index=index,
                folder=class_dir.name,
                label=label,
                wnid=wnid,
                concept=class_concept(label, wnid, info.get("concept")),
            )
        )
        files.extend(f"{class_dir.name}/{n}" for n in names)
        labels.extend([index] * len(names))
    if not files:
        raise ImagesNotFound(f"the class folders under {root} contain no image files")
    return ImageFolderListing(root=root, classes=classes, files=files, labels=labels)


def open_rgb(path: Path) -> Any:
    """Decode an image to RGB; greyscale, RGBA, CMYK and palette images are converted."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")


class ControlImages:
    """Map-style dataset over a listing: (image tensor, position, ok). `transform` is the
    model's input recipe (PIL image -> `[3, side, side]` tensor; models/preprocessing.py)."""

    def __init__(
        self,
        listing: ImageFolderListing,
        positions: list[int],
        transform: Callable[[Any], torch.Tensor],
        side: int,
    ) -> None:
        self.root = listing.root
        self.files = listing.files
        self.positions = positions
        self.side = side
        self.transform = transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, bool]:
        import torch

        position = self.positions[i]
        try:
            image = self.transform(open_rgb(self.root / self.files[position]))
            return image, position, True
        except Exception:  # noqa: BLE001 - any decode failure marks the file unreadable
            return torch.zeros(3, self.side, self.side), position, False
