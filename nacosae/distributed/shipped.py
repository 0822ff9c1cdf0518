"""What a Ray worker sends back of rendered images: PNG bytes, and activations read from them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

Request = tuple[str, int, int]  # concept, first image index, images to render


class ShippedImages:
    """For a model side with `render_many(calls, seed)` and `activations(images)` (explain's
    and the evaluation's): images as the concept cache stores them, and the activations of
    images read back from them, so that a worker computes what a process without Ray does."""

    render_many: Callable[[list[Request], int], list[Any]]
    activations: Callable[[list[Any]], np.ndarray]

    def render_pngs(self, calls: list[Request], seed: int) -> list[bytes]:
        """One text-to-image call's images, as the concept cache stores them (PNG bytes)."""
        from nacosae.store.concepts import encode_png

        return [encode_png(image) for image in self.render_many(calls, seed)]

    def activations_of_pngs(self, pngs: dict[str, list[bytes]]) -> dict[str, np.ndarray]:
        """Per concept, the activations of its images read back from PNG exactly as the concept
        cache reads them (one concept per vision call, as without Ray)."""
        from nacosae.store.concepts import decode_png

        return {c: self.activations([decode_png(p) for p in data]) for c, data in pngs.items()}
