"""Many neurons in one run against one run per neuron (smoke preset, CPU).

- one run explaining 8 neurons, cold concept cache;
- 8 single-neuron runs, each with a cold concept cache (models stay loaded in this process, so
  the comparison leaves out the model loading that separate processes would repeat);
- the 8-neuron run again with the warm concept cache.
Reports images rendered and wall time. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--neurons", type=int, default=8)
    parser.add_argument("--n-iters", type=int, default=10)
    args = parser.parse_args()

    from nacosae import progress
    from nacosae.models.cache import ModelCache
    from nacosae.presets import apply_presets, prepare
    from nacosae.search.options import ExplainOptions
    from nacosae.search.runner import run_explain

    progress.configure(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = ModelCache()
        concepts = root / "home" / "smoke" / "concepts"

        def run(neurons: list[str], name: str) -> tuple[float, dict]:
            options = ExplainOptions(
                neurons=neurons,
                save_dir=root / name,
                controls_root=root / "home" / "controls",
                n_iters=args.n_iters,
            )
            options = prepare(apply_presets(options, ["smoke"]), cache)
            start = time.perf_counter()
            result = run_explain(options, cache)
            wall = time.perf_counter() - start
            return wall, json.loads((result.run_dir / "run.json").read_text())["totals"]

        run(["0"], "warmup")  # builds the tiny components and the smoke control store
        shutil.rmtree(concepts)
        together, totals = run([f"0:{args.neurons}"], "together")
        emit(
            metric="one_run_many_neurons",
            neurons=args.neurons,
            wall_s=round(together, 2),
            images_rendered=totals["images_rendered"],
            llm_calls=totals["llm_calls"],
        )
        kept = root / "together-concepts"
        shutil.move(concepts, kept)
        separate_wall, separate_images = 0.0, 0
        for n in range(args.neurons):
            shutil.rmtree(concepts, ignore_errors=True)
            wall, totals = run([str(n)], f"separate{n}")
            separate_wall += wall
            separate_images += totals["images_rendered"]
        emit(
            metric="separate_single_neuron_runs",
            runs=args.neurons,
            wall_s=round(separate_wall, 2),
            images_rendered=separate_images,
        )
        emit(
            metric="one_run_over_separate_wall",
            value=round(together / separate_wall, 3),
            target=0.5,
        )
        shutil.rmtree(concepts, ignore_errors=True)
        shutil.move(kept, concepts)  # the cache the 8-neuron run filled
        warm, totals = run([f"0:{args.neurons}"], "warm")
        emit(
            metric="warm_concept_cache_rerun",
            wall_s=round(warm, 2),
            images_rendered=totals["images_rendered"],
            cache_hits=totals["cache_hits"],
            target_images=0,
        )


if __name__ == "__main__":
    main()
