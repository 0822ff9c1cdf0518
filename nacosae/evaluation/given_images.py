"""`nacosae evaluate --images DIR`: score images from any source against the controls, with the
evaluation's metrics, so another generator's images (the original's "nanobanana" experiment) or
real photos can be set beside rendered ones.

Two layouts:
- `DIR/<concept>/<image>`: a folder per concept; the explanations (a CSV or a run directory)
  say which neurons each concept explains, and each is scored on its concept's folder (folder
  names match concepts ignoring case, with `_` or spaces);
- `DIR/<neuron>/<concept>/<image>`: a folder per neuron holding a folder per concept; the tree
  is the explanations.
Images are read as the control store was built (its preprocessing and readout) by the model the
store names; nothing is rendered and nothing enters the concept cache.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae import progress
from nacosae.errors import ImagesNotFound, NacosaeError
from nacosae.evaluation.explanations import Explanation
from nacosae.models.concept_images import MIN_IMAGES

if TYPE_CHECKING:
    import numpy as np

    from nacosae.evaluation.job import EvaluateRequest, EvaluateResult
    from nacosae.models.cache import ModelCache

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageSet:
    explanations: list[Explanation]
    folders: dict[str, Path]  # concept key -> its folder of images
    per_neuron: bool


def concept_key(name: str) -> str:
    """What a folder name and a concept are compared by: lower case, `_` as a space."""
    return " ".join(name.replace("_", " ").lower().split())


def read_image_tree(root: Path, explanations: list[Explanation] | None) -> ImageSet:
    """The explanations to score and each one's image folder (see the module docstring)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImagesNotFound(f"--images {root} is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if folders and all(p.name.isdigit() for p in folders):
        return _per_neuron(root, folders, explanations)
    if explanations is None:
        raise NacosaeError(
            f"--images {root} has a folder per concept: give the explanations too (a CSV or run "
            "directory saying which neuron each concept explains), or lay it out as "
            "DIR/<neuron>/<concept>/"
        )
    by_key = {concept_key(p.name): p for p in folders}
    missing = [e.concept for e in explanations if concept_key(e.concept) not in by_key]
    if missing:
        raise ImagesNotFound(
            f"--images {root} has no folder for {len(missing)} concept(s), e.g. "
            f"{missing[0]!r}: name each folder after its concept"
        )
    return ImageSet(explanations, {concept_key(e.concept): by_key[concept_key(e.concept)]
                                   for e in explanations}, False)  # fmt: skip


def _per_neuron(root: Path, neurons: list[Path], given: list[Explanation] | None) -> ImageSet:
    if given is not None:
        raise NacosaeError(
            f"--images {root} has a folder per neuron, which already says what each explains: "
            "give no explanations with it"
        )
    explanations, folders = [], {}
    for neuron_folder in neurons:
        concepts = sorted(p for p in neuron_folder.iterdir() if p.is_dir())
        for rank, folder in enumerate(concepts, start=1):
            concept = folder.name.replace("_", " ")
            key = f"{neuron_folder.name}/{concept_key(concept)}"
            explanations.append(Explanation(int(neuron_folder.name), concept, root.name, rank))
            folders[key] = folder
    if not explanations:
        raise ImagesNotFound(f"--images {root} has neuron folders but no concept folders in them")
    return ImageSet(explanations, folders, True)


def folder_key(image_set: ImageSet, explanation: Explanation) -> str:
    key = concept_key(explanation.concept)
    return f"{explanation.neuron}/{key}" if image_set.per_neuron else key


def load_images(folder: Path) -> tuple[list[Any], list[str]]:
    """The folder's readable images (name order) and the names of those that were not."""
    from PIL import Image, UnidentifiedImageError

    images, unreadable = [], []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (OSError, UnidentifiedImageError):
            unreadable.append(path.name)
    if len(images) < MIN_IMAGES:
        raise ImagesNotFound(
            f"{folder} has {len(images)} readable image(s); a score needs at least {MIN_IMAGES}"
        )
    return images, unreadable


def evaluate_images(
    request: EvaluateRequest, images_root: Path, cache: ModelCache
) -> EvaluateResult:
    """Score every explanation on its folder's images against the controls."""
    from nacosae.config import writable_folder
    from nacosae.controls import open_controls
    from nacosae.evaluation.job import (
        EvaluateResult,
        check_neurons,
        control_store_of,
        metric_summaries,
        read_explanations,
        score_rows,
        write_outputs,
    )
    from nacosae.models.devices import compute_dtype, resolve_device
    from nacosae.models.units import make_readout

    if request.ray:
        raise NacosaeError("--images needs no text-to-image model: drop --ray")
    given = read_explanations(request) if request.explanations is not None else None
    image_set = read_image_tree(images_root, given.explanations if given else None)
    readout = make_readout(request.token_pooling, request.sae, request.latent_pooling)  # type: ignore[arg-type]
    store = open_controls(request.controls_root, request.model, request.layer, readout)
    controls = control_store_of(request, store)
    check_neurons(image_set.explanations, store.n_units, request)
    writable_folder(request.out, "the evaluation folder (--out)")
    device = resolve_device(request.device)
    started = time.perf_counter()
    dtype = compute_dtype("vision", device, store.index["dtype"])
    activations, notes = _activations(request, store, readout, image_set, device, dtype, cache)
    keyed = [
        Explanation(e.neuron, folder_key(image_set, e), e.source, e.rank)
        for e in image_set.explanations
    ]
    rows = score_rows(keyed, activations, controls)
    for row, explanation in zip(rows, image_set.explanations, strict=True):
        row["concept"] = explanation.concept
    summary = {
        "explanations": str(request.explanations) if request.explanations else None,
        "images": str(Path(images_root).expanduser()),
        "model": request.model,
        "layer": request.layer,
        "held_out": None,
        "held_out_reason": "images given (--images): nothing was rendered",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(request).items()},
        "control_store": str(controls.directory),
        "control_images": controls.n_images,
        "rows": len(rows),
        "neurons": len({e.neuron for e in image_set.explanations}),
        "distinct_concepts": len(image_set.folders),
        "seconds": round(time.perf_counter() - started, 3),
        **metric_summaries(rows),
        "notes": notes,
    }
    write_outputs(request.out, rows, summary)
    return EvaluateResult(request.out, rows, summary, notes)


def _activations(
    request: EvaluateRequest,
    store: Any,
    readout: Any,
    image_set: ImageSet,
    device: str,
    dtype: str,
    cache: ModelCache,
) -> tuple[dict[str, np.ndarray], list[str]]:
    """[images, units] per image folder, read by the store's model as the store was built."""
    from nacosae.models.cache import ModelHandle
    from nacosae.models.preprocessing import Preprocessing
    from nacosae.models.vision import load_vision, vision_activations, vision_spec, weights_id_of

    spec = vision_spec(request.model, request.weights, device, dtype)
    vision = ModelHandle(cache, spec, load_vision)
    if weights_id_of(vision) != store.index["weights"]:
        raise NacosaeError(
            f"the control store was built with weights {store.index['weights']}, not "
            f"{weights_id_of(vision)}: pass the same --weights as to `nacosae controls`"
        )
    recipe = Preprocessing.from_json(store.index["preprocessing_recipe"])
    measure = vision_activations(vision, request.layer, recipe, readout)
    found, notes = {}, []
    with progress.progress_bar("folders") as bar:
        task = bar.add_task("measuring the given images", total=len(image_set.folders))
        for key, folder in image_set.folders.items():
            images, unreadable = load_images(folder)
            if unreadable:
                notes.append(f"{folder}: {len(unreadable)} unreadable image(s) left out")
            found[key] = measure(images)
            bar.advance(task, 1)
    return found, notes
