"""Model folders that hold only configs, from the published ones in `benchmarks/configs/`: what
`explain --dry-run` plans from on a machine without the weights (models/memory.py counts the
parameters on PyTorch's meta device)."""

from __future__ import annotations

import json
from pathlib import Path

CONFIGS = Path(__file__).parents[1] / "benchmarks" / "configs"


def _read(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}


def pipeline_config_folder(name: str, folder: Path) -> Path:
    """A diffusers pipeline folder of configs (model_index.json, each component's config and
    the scheduler's) for `benchmarks/configs/<name>`."""
    source = CONFIGS / name
    layout = json.loads((source / "pipeline.json").read_text())
    index: dict = {
        "_class_name": layout["pipeline"],
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", layout["scheduler"]],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    for part, class_name in ("unet", "UNet2DConditionModel"), ("vae", "AutoencoderKL"):
        config = {"_class_name": class_name, **_read(source / f"{part}.json")}
        _write(folder / part / "config.json", config)
    for encoder, class_name in layout["text_encoders"].items():
        index[encoder] = ["transformers", class_name]
        config = {"model_type": "clip_text_model", "architectures": [class_name]}
        _write(folder / encoder / "config.json", {**config, **_read(source / f"{encoder}.json")})
    for tokenizer in layout["tokenizers"]:
        index[tokenizer] = ["transformers", "CLIPTokenizer"]
    if layout["pipeline"] == "StableDiffusionPipeline":
        index.update(safety_checker=[None, None], feature_extractor=[None, None])
        index["requires_safety_checker"] = False
    scheduler = {"_class_name": layout["scheduler"], **_read(source / "scheduler.json")}
    _write(folder / "scheduler" / "scheduler_config.json", scheduler)
    _write(folder / "model_index.json", index)
    return folder


def llm_config_folder(name: str, folder: Path) -> Path:
    """A transformers model folder holding only `benchmarks/configs/<name>` as config.json."""
    _write(folder / "config.json", json.loads((CONFIGS / name).read_text()))
    return folder


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
