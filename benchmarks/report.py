"""`nacosae report` over 1,000 runs: seconds for the table and for CSV (whole command, as a user
runs it). The runs are copies of one real smoke-preset run (run.json, events.jsonl,
summary.json; 2 neurons each) under distinct run ids. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    from nacosae import progress
    from nacosae.models.cache import ModelCache
    from nacosae.search.runner import ExplainOptions, run_explain

    progress.configure(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        options = ExplainOptions(
            neurons=["0,1"],
            save_dir=root / "seed",
            controls_root=root / "home" / "controls",
            n_iters=10,
            preset="smoke",
            save_images=False,
        )
        source = run_explain(options, ModelCache()).run_dir
        runs = root / "runs"
        for i in range(args.runs):
            target = runs / f"{source.name}-{i:04d}"
            target.mkdir(parents=True)
            for name in ("run.json", "events.jsonl", "summary.json"):
                shutil.copyfile(source / name, target / name)
        for fmt in ("table", "csv"):
            command = [sys.executable, "-m", "nacosae", "report", str(runs), "--format", fmt]
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                best = min(best, time.perf_counter() - start)
            print(
                json.dumps(
                    {
                        "metric": f"report_{fmt}_seconds",
                        "runs": args.runs,
                        "value": round(best, 3),
                        "target": 2.0,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
