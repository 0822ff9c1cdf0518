"""A concept's images and their activations: the one way the concept cache is filled.

Explain and evaluate, in process and on Ray, fill the concept cache through `fill_concept_cache`:
for each concept it finds images 0..n-1 and the activations of every unit of the layer on them,
renders only the images the cache lacks, and measures only what it has not measured. The model
work runs through an `Executor` (models/sides.py), so a side in this process and the workers of
a Ray cluster compute exactly the same: images travel as the PNG bytes the cache stores, and
activations are always read from the decoded PNGs, never from the images before encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nacosae import progress
from nacosae.models.text2image import Request, chunked

if TYPE_CHECKING:
    import numpy as np

    from nacosae.models.cache import ModelHandle
    from nacosae.models.preprocessing import Preprocessing
    from nacosae.models.sides import Executor
    from nacosae.models.text2image import GenerationSettings
    from nacosae.models.units import Readout
    from nacosae.store.concepts import ConceptCache

MIN_IMAGES = 2  # a score compares the concept's image set with the controls
Phase = Callable[[str], AbstractContextManager[Any]]  # a timer's `phase(name)`


def check_num_img(num_img: int) -> None:
    from nacosae.errors import NacosaeError

    if num_img < MIN_IMAGES:
        raise NacosaeError(f"--num-img must be at least {MIN_IMAGES} (scores compare image sets)")


class ImageSide:
    """What a model side with `render_many(calls, seed)` and `activations(images)` offers the
    fill path (explain's and the evaluation's sides mix it in)."""

    render_many: Callable[[list[Request], int], list[Any]]
    activations: Callable[[list[Any]], np.ndarray]

    def render_pngs(self, calls: list[Request], seed: int) -> list[bytes]:
        """One text-to-image call's images, as the concept cache stores them (PNG bytes)."""
        from nacosae.store.concepts import encode_png

        return [encode_png(image) for image in self.render_many(calls, seed)]

    def activations_of_pngs(self, pngs: dict[str, list[bytes]]) -> dict[str, np.ndarray]:
        """Per concept, the activations of its images read back from PNG exactly as the concept
        cache reads them (one concept per vision call)."""
        from nacosae.store.concepts import decode_png

        return {c: self.activations([decode_png(p) for p in data]) for c, data in pngs.items()}


@dataclass
class FillCounts:
    """What filling the cache took: concepts with images rendered, images rendered, concepts
    whose images were all cached already, and forward passes of the explained model."""

    concepts_rendered: int = 0
    images_rendered: int = 0
    cache_hits: int = 0
    vision_forward_passes: int = 0


@dataclass(frozen=True)
class FillSettings:
    num_img: int
    seed: int
    t2i_batch: int
    one_concept_per_call: bool = False  # explain mixes concepts in a call, evaluate does not
    vision_batch: int = 64


def fill_concept_cache(
    cache: ConceptCache,
    executor: Executor,
    concepts: Sequence[str],
    settings: FillSettings,
    counts: FillCounts | None = None,
    phase: Phase | None = None,
    round_size: int | None = None,
    on_round: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """`[num_img, units]` activations of every concept, rendering and measuring only what the
    cache lacks. Work goes in rounds of `round_size` concepts (default: all at once), each saved
    before the next starts, so a killed command keeps the rounds it finished; `on_round(k)`
    after each with the number of concepts it completed. `phase("t2i" | "vision" | "io")` times
    the steps."""
    counts = counts if counts is not None else FillCounts()
    phase = phase or (lambda _name: nullcontext())
    n = settings.num_img
    found: dict[str, np.ndarray] = {}
    todo: list[Request] = []
    with phase("io"):
        for concept in dict.fromkeys(concepts):
            have = min(cache.image_count(concept), n)
            stored = cache.load_activations(concept, n) if have == n else None
            if stored is not None:
                found[concept] = stored
            else:
                todo.append((concept, have, n - have))
    counts.cache_hits += sum(1 for c in dict.fromkeys(concepts) if c in found)
    progress.debug(f"concept cache: {len(found)} of {len(found) + len(todo)} concepts at hand")
    step = max(1, round_size or len(todo) or 1)
    for start in range(0, len(todo), step):
        part = todo[start : start + step]
        found.update(_fill_round(cache, executor, part, settings, counts, phase))
        if on_round is not None:
            on_round(len(part))
    return found


def _fill_round(
    cache: ConceptCache,
    executor: Executor,
    todo: list[Request],
    settings: FillSettings,
    counts: FillCounts,
    phase: Phase,
) -> dict[str, np.ndarray]:
    """Render the missing images of `todo` (saved as each call finishes), then measure every
    image of each concept (saved as each group finishes)."""
    rendering = [r for r in todo if r[2] > 0]
    if settings.one_concept_per_call:
        calls = [call for r in rendering for call in chunked([r], settings.t2i_batch)]
    else:
        calls = chunked(rendering, settings.t2i_batch)
    new: dict[str, dict[int, bytes]] = {c: {} for c, _, _ in todo}
    rendered = executor.completed("render_pngs", [(call, settings.seed) for call in calls])
    for index, pngs in _timed(rendered, phase, "t2i"):
        images = iter(pngs)
        with phase("io"):
            for concept, first, count in calls[index]:
                mine = [next(images) for _ in range(count)]
                cache.save_encoded(concept, first, mine)
                new[concept].update(zip(range(first, first + count), mine, strict=True))
    counts.concepts_rendered += len(rendering)
    counts.images_rendered += sum(count for _, _, count in rendering)
    with phase("io"):
        everything = {
            concept: [
                *cache.encoded_images(concept, first),
                *(new[concept][k] for k in range(first, first + count)),
            ]
            for concept, first, count in todo
        }
    measured: dict[str, np.ndarray] = {}
    groups = _groups(list(everything), executor.width)
    tasks = [({c: everything[c] for c in group},) for group in groups]
    for _index, part in _timed(executor.completed("activations_of_pngs", tasks), phase, "vision"):
        with phase("io"):
            for concept, activations in part.items():
                cache.save_activations(concept, activations)
        measured.update(part)
    counts.vision_forward_passes += sum(
        -(-len(images) // settings.vision_batch) for images in everything.values()
    )
    return measured


def _timed(results: Iterator[Any], phase: Phase, name: str) -> Iterator[Any]:
    """`results`, the wait for each counted as phase `name` (and nothing else)."""
    while True:
        with phase(name):
            item = next(results, _END)
        if item is _END:
            return
        yield item


_END = object()


def _groups(concepts: list[str], width: int) -> list[list[str]]:
    """Concepts in about four tasks per side (fewer round trips, still balanced)."""
    size = max(1, -(-len(concepts) // (4 * width)))
    return [concepts[start : start + size] for start in range(0, len(concepts), size)]


# ---------------------------------------------------------------- cache keys


def generation_key(
    generation: GenerationSettings,
    t2i: ModelHandle,
    variant: str,
    seed: int,
    device: str,
    **extra: Any,
) -> dict[str, Any]:
    """The concept-cache key part of the images: every setting that changes the pixels,
    including the pipeline's resolved revision and weight variant."""
    from dataclasses import asdict

    return {
        **asdict(generation),
        **extra,
        "revision": t2i.spec.revision,
        "variant": variant,
        "seed": seed,
        "dtype": t2i.spec.dtype,
        "device": device.split(":")[0],
    }


def vision_key(
    model: str,
    layer: str,
    weights_id: str,
    vision: ModelHandle,
    recipe: Preprocessing,
    readout: Readout,
) -> dict[str, Any]:
    """The concept-cache key part of the activations: model, weights, layer, dtype,
    preprocessing and units (pooling, SAE)."""
    return {
        "model": model,
        "weights": weights_id,
        "layer": layer,
        "dtype": vision.spec.dtype,
        "preprocessing": recipe.describe(),
        "units": readout.identity(),
    }
