"""`nacosae report` and the dashboard over 1,000 runs.

Seconds for `report` as a table and as CSV (the whole command, as a user runs it), and for the
dashboard's first render (streamlit's AppTest running dashboard/app.py, in-process). The runs are
copies of one real smoke-preset run (run.json, events.jsonl, summary.json; 2 neurons each) under
distinct run ids. Prints JSON lines.
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
    from nacosae.presets import apply_presets, prepare
    from nacosae.search.options import ExplainOptions
    from nacosae.search.runner import run_explain

    progress.configure(quiet=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        options = ExplainOptions(
            neurons=["0,1"],
            save_dir=root / "seed",
            controls_root=root / "home" / "controls",
            n_iters=10,
            save_images=False,
        )
        cache = ModelCache()
        source = run_explain(prepare(apply_presets(options, ["smoke"]), cache), cache).run_dir
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
        dashboard_first_render(runs)


def dashboard_first_render(runs: Path) -> None:
    """Seconds for the dashboard's first full render (after one run that warms the imports)."""
    import os

    from streamlit.testing.v1 import AppTest

    os.environ["NACOSAE_DASHBOARD_RUNS"] = str(runs)
    app = str(Path(__file__).parents[1] / "dashboard" / "app.py")
    AppTest.from_file(app, default_timeout=120).run()  # imports streamlit, matplotlib, ...
    import streamlit as st

    st.cache_data.clear()  # the timed render reads the 1,000 run.json files again
    start = time.perf_counter()
    at = AppTest.from_file(app, default_timeout=120).run()
    seconds = time.perf_counter() - start
    assert not at.exception, at.exception
    line = {"metric": "dashboard_first_render_seconds", "runs": len(list(runs.iterdir()))}
    print(json.dumps({**line, "value": round(seconds, 3), "target": 3.0}), flush=True)


if __name__ == "__main__":
    main()
