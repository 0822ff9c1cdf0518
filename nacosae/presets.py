"""`--preset smoke`: tiny random components built in-process, no downloads.

It checks an installation end to end on a CPU in well under a minute: a tiny CNN, a tiny
diffusers pipeline (64 px), a tiny Llama whose sampled replies are kept well-formed by a token
constraint, and a control store over generated images. The models are saved as local model
folders under NACOSAE_HOME/smoke/models (built once) and load through the same loaders as real
models. Its results mean nothing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from nacosae.models.cache import ModelCache

if TYPE_CHECKING:
    from nacosae.search.runner import ExplainOptions

SMOKE_T2I = "tiny-sd"  # folder names under NACOSAE_HOME/smoke/models
SMOKE_LLM = "tiny-llama"
SMOKE_CLASSES = (
    "apple", "boat", "car", "dog", "cat", "tree", "house", "bird", "fence", "flower", "lake",
    "clock",
)  # fmt: skip


def write_smoke_images(root: Path, per_class: int = 3) -> Path:
    """Small coloured-shape images, one folder per smoke class (written once)."""
    import numpy as np
    from PIL import Image, ImageDraw

    if (root / SMOKE_CLASSES[-1] / f"{per_class - 1}.png").is_file():
        return root
    rng = np.random.default_rng(0)
    for c, name in enumerate(SMOKE_CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            image = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 256, 3)))
            box = sorted(rng.integers(4, 60, 2).tolist())
            draw = ImageDraw.Draw(image)
            (draw.ellipse if (c + k) % 2 else draw.rectangle)(
                [box[0], box[0], box[1], box[1]], fill=colour
            )
            image.save(folder / f"{k}.png")
    return root


def smoke_options(options: ExplainOptions) -> ExplainOptions:
    """The options of a smoke run: tiny model folders, CPU, few steps (nothing is built yet)."""
    models = Path(options.controls_root).parent / "smoke" / "models"
    return replace(
        options,
        model="tiny_cnn",
        layer="avgpool",
        weights="none",
        t2i_model=str(models / SMOKE_T2I),
        language_model=str(models / SMOKE_LLM),
        llm_url=None,
        num_inf_steps=options.num_inf_steps or 2,
        guidance_scale=0.0 if options.guidance_scale is None else options.guidance_scale,
        device="cpu",
        controls_root=Path(options.controls_root).parent / "smoke" / "controls",
        max_new_tokens=16,
    )


def write_smoke_models(t2i_folder: Path, llm_folder: Path) -> None:
    """Save the tiny pipeline and the tiny Llama as model folders (once)."""
    from nacosae.models.tiny import smoke_language_model, tiny_text2image_pipeline

    if not (t2i_folder / "model_index.json").is_file():
        pipe = tiny_text2image_pipeline(t2i_folder.parent / "work")
        pipe.save_pretrained(t2i_folder.with_suffix(".tmp"))
        t2i_folder.with_suffix(".tmp").replace(t2i_folder)
    if not (llm_folder / "config.json").is_file():
        model, tokenizer = smoke_language_model()
        staging = llm_folder.with_suffix(".tmp")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.replace(llm_folder)


def prepare_smoke(options: ExplainOptions, cache: ModelCache) -> ExplainOptions:
    """Build the tiny models and control store of `smoke_options(...)` (once); returns the
    options with the LLM's format constraint attached."""
    from nacosae.controls import ControlsRequest, build_controls
    from nacosae.models.tiny import smoke_answer_constraint, smoke_tokenizer

    root = Path(options.controls_root).parent
    write_smoke_models(Path(options.t2i_model), Path(options.language_model))
    images = write_smoke_images(root / "images")
    build_controls(
        ControlsRequest(
            model="tiny_cnn",
            layer="avgpool",
            images=images,
            controls_root=options.controls_root,
            weights="none",
            batch_size=64,
            workers=0,
            device="cpu",
        ),
        cache,
    )
    return replace(options, llm_constraint=smoke_answer_constraint(smoke_tokenizer()))
