"""The concept cache: rendered images and their activations, shared by neurons and runs.

`NACOSAE_HOME/concepts/<generation key>/<concept key>/`
- `concept.json`: the concept and the full generation settings behind the keys;
- `<k>.png`: image k of the concept (the settings, the seed, the concept and k decide it; on the
  CPU in float32 to the bit, on a GPU in half precision up to the last bits, which may depend on
  the other images of its text-to-image call);
- `activations-<vision key>.safetensors`: `activations [n, units]` of every unit of one
  (explained model, weights, layer, dtype) on images 0..n-1.

Keys are sha256 hashes of the complete settings, so any change is a miss, never a stale hit.
Files are written under temporary names and renamed, so two processes filling the same entry
cannot leave a torn file; whichever rename lands last wins with identical content.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae.store.atomic import atomic_write, atomic_write_json

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

FORMAT_VERSION = 1


def content_key(settings: dict[str, Any]) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ConceptKeys:
    generation: dict[str, Any]  # t2i model, steps, guidance, size, prompt scheme, seed
    vision: dict[str, Any]  # explained model, weights id, layer, dtype, preprocessing

    @property
    def generation_key(self) -> str:
        return content_key({"format": FORMAT_VERSION, **self.generation})

    @property
    def vision_key(self) -> str:
        return content_key({"format": FORMAT_VERSION, **self.vision})


def encode_png(image: Image) -> bytes:
    """An image as the concept cache stores it (PNG)."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> Image:
    """PNG bytes as the concept cache reads an image (RGB)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


class ConceptCache:
    """The concept cache's entries for one generation setting and one explained model/layer
    (filled by `models.concept_images.fill_concept_cache`)."""

    def __init__(self, root: Path, keys: ConceptKeys) -> None:
        self.root = Path(root) / keys.generation_key
        self.keys = keys

    def folder(self, concept: str) -> Path:
        return self.root / content_key({"concept": concept})

    def image_count(self, concept: str) -> int:
        """How many leading images 0..n-1 exist."""
        folder, n = self.folder(concept), 0
        while (folder / f"{n}.png").is_file():
            n += 1
        return n

    def image_path(self, concept: str, k: int) -> Path:
        return self.folder(concept) / f"{k}.png"

    def load_images(self, concept: str, n: int) -> list[Image]:
        from PIL import Image

        images = []
        for k in range(n):
            with Image.open(self.image_path(concept, k)) as image:
                images.append(image.convert("RGB"))
        return images

    def save_images(self, concept: str, first: int, images: list[Image]) -> None:
        self.save_encoded(concept, first, [encode_png(image) for image in images])

    def save_encoded(self, concept: str, first: int, pngs: list[bytes]) -> None:
        """Images `first`, `first + 1`, ... given as PNG bytes (as a Ray worker returns them)."""
        folder = self.folder(concept)
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "concept.json"
        if not meta.is_file():
            atomic_write_json(meta, {"concept": concept, "generation": self.keys.generation})
        for offset, data in enumerate(pngs):
            path = folder / f"{first + offset}.png"
            atomic_write(path, lambda tmp, data=data: Path(tmp).write_bytes(data))

    def encoded_images(self, concept: str, n: int) -> list[bytes]:
        return [self.image_path(concept, k).read_bytes() for k in range(n)]

    def _activations_path(self, concept: str) -> Path:
        return self.folder(concept) / f"activations-{self.keys.vision_key}.safetensors"

    def load_activations(self, concept: str, n: int) -> np.ndarray | None:
        """Activations of images 0..n-1, if at least n are stored."""
        from safetensors.numpy import load_file

        path = self._activations_path(concept)
        if not path.is_file():
            return None
        try:
            stored = load_file(str(path))["activations"]
        except Exception:  # noqa: BLE001 - a damaged entry is recomputed, never trusted
            return None
        return stored[:n] if stored.shape[0] >= n else None

    def save_activations(self, concept: str, activations: np.ndarray) -> None:
        import numpy as np
        from safetensors.numpy import save_file

        path = self._activations_path(concept)
        meta = {"vision": json.dumps(self.keys.vision, sort_keys=True), "concept": concept}
        data = {"activations": np.ascontiguousarray(activations, dtype=np.float32)}
        atomic_write(path, lambda tmp: save_file(data, str(tmp), metadata=meta))
