"""Where the time of an explain run goes, and what batching the text-to-image calls buys.

1. A smoke-preset run (tiny random components, CPU, 10 iterations + summary) timed per phase:
   LLM, T2I, explained model, scoring, I/O, and the remainder (loop overhead). The share outside
   model calls (scoring + I/O + remainder) is reported against the 5% target.
2. The tiny pipeline rendering 5 images of a concept in one batched call against 5 single-image
   calls (same seeds, same images).
Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from nacosae import progress
    from nacosae.models.cache import ModelCache, ModelHandle
    from nacosae.models.text2image import GenerationSettings, TextToImage
    from nacosae.presets import apply_presets, prepare
    from nacosae.search.options import ExplainOptions
    from nacosae.search.runner import run_explain

    progress.configure(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = ModelCache()
        options = ExplainOptions(
            neurons=["0"],
            save_dir=root / "runs",
            controls_root=root / "home" / "controls",
            n_iters=args.n_iters,
        )
        options = prepare(apply_presets(options, ["smoke"]), cache)
        run_explain(options, cache)  # builds and caches the tiny components once
        for neuron in range(1, 1 + args.repeats):
            options.neurons = [str(neuron)]
            start = time.perf_counter()
            result = run_explain(options, cache)
            wall = time.perf_counter() - start
            record = json.loads((result.run_dir / "run.json").read_text())
            phases = record["totals"]["seconds"]
            model_calls = phases["llm"] + phases["t2i"] + phases["vision"]
            outside = wall - model_calls
            emit(
                metric="explain_smoke_breakdown_seconds",
                neuron=neuron,
                wall=round(wall, 3),
                **phases,
                remainder=round(wall - sum(phases.values()), 4),
                outside_model_calls_share=round(outside / wall, 4),
                target_share=0.05,
            )

        (spec, _pipe), *_ = [(s, o) for s, o in cache.loaded() if s.kind == "t2i"]
        t2i = TextToImage(ModelHandle(cache, spec), GenerationSettings(spec.id, 2, 0.0))
        t2i.render("warm up", 5, seed=0)
        batched, single = [], []
        for r in range(args.repeats):
            start = time.perf_counter()
            t2i.render(f"red apple {r}", 5, seed=1)
            batched.append(time.perf_counter() - start)
            start = time.perf_counter()
            for k in range(5):
                t2i.render(f"red apple {r}", 1, seed=1, first=k)
            single.append(time.perf_counter() - start)
        emit(
            metric="t2i_batched_vs_single_calls",
            images=5,
            batched_s=round(min(batched), 4),
            single_calls_s=round(min(single), 4),
            speedup=round(min(single) / min(batched), 2),
        )


if __name__ == "__main__":
    main()
