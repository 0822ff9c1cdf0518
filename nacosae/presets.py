"""Presets: named sets of explain options, applied where options are made (the CLI and the API).

- `line`: the published experiments (LINE / NaCoSAE: its `src/` at the published commit, run
  with the settings of its published 100-unit runs on branch `analysis`), setting by setting:
  SDXL base 1.0 and Llama-3.1-8B-Instruct, the mean activation as the score, the original's
  class names, answer reading, repeat handling, history update, top-k 50 and per-render framing.
  README's settings table lists each beside the original's code defaults and nacosae's own.
- `smoke`: tiny random components built in-process, no downloads, to check an installation end
  to end on a CPU in well under a minute: a tiny CNN, a tiny diffusers pipeline (64 px), a tiny
  Llama whose sampled replies are kept well-formed by a token constraint, a tiny sentence
  embedder, and a control store over generated images, all saved under NACOSAE_HOME/smoke and
  loaded by the same loaders as real models. Its results mean nothing. A real LLM may replace the
  tiny one (`--llm-url`, where the server's own model answers unless `--language-model` names
  one, or `--language-model` a local folder or GGUF file) to check it against the tiny parts.

Options given explicitly win over presets; with both presets, `line` decides the method and
`smoke` the models. run.json records the preset names beside the resolved options, so a resumed
run has the same settings; `prepare` rebuilds what `smoke` needs at run time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae import progress
from nacosae.errors import NacosaeError
from nacosae.models.cache import ModelCache

if TYPE_CHECKING:
    from nacosae.search.options import ExplainOptions

PRESETS = ("smoke", "line")  # also the order they apply in: later ones win
SMOKE_T2I = "tiny-sd"  # folder names under NACOSAE_HOME/smoke/models
SMOKE_LLM = "tiny-llama"
SMOKE_EMBEDDER = "tiny-embedder"
SMOKE_WARNING = "--preset smoke uses tiny random models: its results mean nothing"
SMOKE_CLASSES = (
    "apple", "boat", "car", "dog", "cat", "tree", "house", "bird", "fence", "flower", "lake",
    "clock",
)  # fmt: skip

LINE_T2I_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
LINE_LANGUAGE_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LINE_SETTINGS: dict[str, Any] = {
    "t2i_model": LINE_T2I_MODEL,
    "language_model": LINE_LANGUAGE_MODEL,
    "num_img": 5,
    "num_inf_steps": 25,
    "guidance_scale": "pipeline",  # the original passed it where diffusers ignores it
    "n_iters": 10,
    "metric": "mean",
    "prompt": "line-main",
    "summary_prompt": "line-summary",
    "control_strategy": "dissimilar-class",
    "max_new_tokens": 3000,
    "image_prompts": "line-per-render",
    "image_seeds": "index",
    "initial_random": "any",
    "llm_output": "tags",
    "class_names": "original",
    "answer_parsing": "original",
    "repeats": "rescore",
    "history_update": "original",
    "llm_top_k": 50,  # transformers' default, which the original's pipeline call kept
    "image_size": 224,  # Resize(224) + CenterCrop(224); the control store must agree
    "seed": 42,
}


def smoke_settings(home: Path) -> dict[str, Any]:
    """The smoke preset's models and places under NACOSAE_HOME `home` (explain uses them all,
    evaluate those it has)."""
    root = Path(home) / "smoke"
    return {
        "model": "tiny_cnn",
        "layer": "avgpool",
        "weights": "none",
        "t2i_model": str(root / "models" / SMOKE_T2I),
        "language_model": str(root / "models" / SMOKE_LLM),
        "embedder": str(root / "models" / SMOKE_EMBEDDER),
        "llm_url": None,
        "num_inf_steps": 2,
        "guidance_scale": 0.0,
        "device": "cpu",
        "controls_root": root / "controls",
    }


def apply_presets(
    options: ExplainOptions, names: Iterable[str], explicit: Iterable[str] = ()
) -> ExplainOptions:
    """`options` with the presets' settings, except those in `explicit` (given by the user)."""
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise NacosaeError(f"unknown preset {unknown[0]!r}: use {' or '.join(PRESETS)}")
    values: dict[str, Any] = {}
    if "smoke" in names:
        values.update(smoke_settings(Path(options.controls_root).parent))
    if "line" in names:
        models = ("t2i_model", "language_model") if "smoke" in names else ()
        values.update({k: v for k, v in LINE_SETTINGS.items() if k not in models})
    explicit = set(explicit)
    if "smoke" in names and "llm_url" in explicit and "language_model" not in explicit:
        values["language_model"] = ""  # a real LLM behind --llm-url: the server's own model
    kept = {k: v for k, v in values.items() if k not in explicit}
    return replace(options, **kept, preset=[n for n in PRESETS if n in names])


def prepare(options: ExplainOptions, cache: ModelCache) -> ExplainOptions:
    """Build what the presets of `options` need before a run (also for a resumed one: run.json
    records the preset names, and this applies what they need again)."""
    if "smoke" not in options.preset:
        return options
    from nacosae.search.runner import check_output_folders

    check_output_folders(options)
    progress.calm_libraries()
    prepared = prepare_smoke(options, cache)
    progress.warn(SMOKE_WARNING)
    return prepared


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


def write_smoke_models(models: Path, embedder_too: bool) -> None:
    """Save the tiny pipeline and Llama (and the sentence embedder, when the control strategy
    needs one) as model folders, once."""
    from nacosae.models.tiny import (
        smoke_language_model,
        tiny_text2image_pipeline,
        write_tiny_sentence_embedder,
    )

    def save_llm(staging: Path) -> None:
        model, tokenizer = smoke_language_model()
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    _write_folder_once(
        models / SMOKE_T2I,
        "model_index.json",
        lambda staging: tiny_text2image_pipeline(models / "work").save_pretrained(staging),
    )
    _write_folder_once(models / SMOKE_LLM, "config.json", save_llm)
    if embedder_too:
        _write_folder_once(
            models / SMOKE_EMBEDDER,
            "modules.json",
            lambda staging: write_tiny_sentence_embedder(staging, models / "work"),
        )


def _write_folder_once(folder: Path, marker: str, write: Callable[[Path], Any]) -> None:
    """Write a model folder under a staging name and rename it, unless it is already complete
    (its `marker` file exists): a killed build leaves no half folder in use."""
    if (folder / marker).is_file():
        return
    staging = folder.with_suffix(".tmp")
    write(staging)
    staging.replace(folder)


def build_smoke_parts(home: Path, cache: ModelCache, embedder_too: bool = False) -> Path:
    """The smoke preset's tiny models and control store under `home` (NACOSAE_HOME/smoke),
    built once; returns the smoke control root."""
    from nacosae.store.atomic import exclusive

    with exclusive(home / ".building.lock"):  # two commands at once on a fresh home
        _build_smoke_parts(home, cache, embedder_too)
    return home / "controls"


def _build_smoke_parts(home: Path, cache: ModelCache, embedder_too: bool) -> None:
    from nacosae.controls import ControlsRequest, build_controls

    write_smoke_models(home / "models", embedder_too)
    images = write_smoke_images(home / "images")
    build_controls(
        ControlsRequest(
            model="tiny_cnn",
            layer="avgpool",
            images=images,
            controls_root=home / "controls",
            weights="none",
            batch_size=64,
            workers=0,
            device="cpu",
        ),
        cache,
    )


def prepare_smoke(options: ExplainOptions, cache: ModelCache) -> ExplainOptions:
    """Build the tiny models and control store (once); returns the options with the LLM's
    format constraint attached."""
    from nacosae.models.tiny import SMOKE_CONSTRAINT

    root = Path(options.controls_root).parent
    build_smoke_parts(root, cache, options.needs_embedder())
    if options.llm_url or Path(options.language_model) != root / "models" / SMOKE_LLM:
        return options  # a real LLM (--llm-url or --language-model): no format constraint
    if options.llm_output == "json":
        raise NacosaeError(
            "the smoke preset's tiny LLM answers in tags only: use --llm-output tags or auto, or "
            "give a real LLM (--llm-url, or --language-model FOLDER or FILE.gguf)"
        )
    return replace(options, llm_constraint=SMOKE_CONSTRAINT)


def smoke_evaluation(
    params: dict[str, Any], given: set[str], home: Path, cache: ModelCache
) -> Path:
    """`evaluate --preset smoke`: the smoke models in `params` wherever the user gave no value,
    built once; returns the smoke control root."""
    values = smoke_settings(home)
    for name in params.keys() & values.keys() - given:
        params[name] = values[name]
    progress.calm_libraries()
    controls_root = build_smoke_parts(Path(home) / "smoke", cache)
    progress.warn(SMOKE_WARNING)
    return controls_root
