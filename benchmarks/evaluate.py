"""`nacosae evaluate` on the smoke preset: 50 neurons x 3 concepts in one evaluation, against the
same explanations evaluated one neuron at a time (each with a fresh concept cache, as separate
notebook runs would). Prints JSON lines: wall time, concepts and images rendered, vision forward
passes.

Run: `uv run python benchmarks/evaluate.py [--num-img 50]` (CPU, tiny random models).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NEURONS = 50  # latents of a random 64-latent SAE on the smoke CNN's avgpool (32 channels)
COLOURS = ("red", "blue", "green", "striped", "round")
THINGS = ("apple", "boat", "car", "dog", "tree", "house", "kite", "lamp")
CONCEPT_POOL = [f"{colour} {thing}" for colour in COLOURS for thing in THINGS]


def explanations(path: Path, per_neuron: int = 3) -> None:
    rng = random.Random(0)
    lines = ["neuron,concept"]
    for neuron in range(NEURONS):
        lines += [f"{neuron},{concept}" for concept in rng.sample(CONCEPT_POOL, per_neuron)]
    path.write_text("\n".join(lines) + "\n")


def write_sae(path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    save_file({"W_enc": torch.randn(32, 64), "b_enc": torch.zeros(64)}, str(path))


def run(home: Path, csv_path: Path, num_img: int, sae: Path) -> dict:
    from nacosae.config import settings
    from nacosae.controls import ControlsRequest, build_controls
    from nacosae.evaluation.job import EvaluateRequest, evaluate
    from nacosae.models.cache import shared_cache
    from nacosae.presets import SMOKE_T2I, build_smoke_parts

    os.environ["NACOSAE_HOME"] = str(home)
    settings.cache_clear()
    controls_root = build_smoke_parts(home / "smoke", shared_cache())
    images = home / "smoke" / "images"
    build_controls(
        ControlsRequest("tiny_cnn", "avgpool", images, controls_root, "none", workers=0, sae=sae),
        shared_cache(),
    )
    request = EvaluateRequest(
        explanations=csv_path,
        model="tiny_cnn",
        layer="avgpool",
        controls_root=controls_root,
        out=home / "out",
        weights="none",
        sae=str(sae),
        t2i_model=str(home / "smoke" / "models" / SMOKE_T2I),
        num_img=num_img,
        num_inf_steps=2,
        guidance_scale=0.0,
        device="cpu",
        t2i_batch=8,
    )
    started = time.perf_counter()
    result = evaluate(request, shared_cache())
    return {"seconds": time.perf_counter() - started, **result.summary["counts"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-img", type=int, default=50)
    args = parser.parse_args()
    from nacosae import progress

    progress.configure(quiet=True)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        csv_path, sae = work / "explanations.csv", work / "sae.safetensors"
        explanations(csv_path)
        write_sae(sae)
        lines = csv_path.read_text().splitlines()[1:]
        run(work / "warmup", csv_path, 2, sae)  # model loads and smoke parts, not timed
        together = run(work / "together", csv_path, args.num_img, sae)
        together.update(rows=len(lines), distinct_concepts=len({ln.split(",")[1] for ln in lines}))
        print(json.dumps({"mode": "one evaluation", "num_img": args.num_img, **together}))
        totals: dict[str, float] = {}
        by_neuron: dict[str, list[str]] = {}
        for line in lines:
            by_neuron.setdefault(line.split(",")[0], []).append(line)
        for neuron, rows in by_neuron.items():
            single = work / f"neuron-{neuron}.csv"
            single.write_text("neuron,concept\n" + "\n".join(rows) + "\n")
            counts = run(work / f"alone-{neuron}", single, args.num_img, sae)
            for key, value in counts.items():
                totals[key] = totals.get(key, 0) + value
        print(json.dumps({"mode": "one neuron at a time", "num_img": args.num_img, **totals}))


if __name__ == "__main__":
    main()
