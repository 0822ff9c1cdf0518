"""Wall time of `uv run nacosae --help` (the CLI must not import torch at start-up).

Prints JSON lines: the median of several runs, and the import-only time of `nacosae.cli`.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import time


def wall(command: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    runs = 7
    uv = shutil.which("uv")
    if uv:
        times = wall([uv, "run", "--frozen", "nacosae", "--help"], runs)
        print(
            json.dumps(
                {
                    "metric": "uv_run_nacosae_help_seconds",
                    "value": round(statistics.median(times), 3),
                    "max": round(max(times), 3),
                    "runs": runs,
                    "target": 1.5,
                }
            )
        )
    times = wall([sys.executable, "-m", "nacosae", "--help"], runs)
    print(
        json.dumps(
            {
                "metric": "python_m_nacosae_help_seconds",
                "value": round(statistics.median(times), 3),
                "runs": runs,
            }
        )
    )


if __name__ == "__main__":
    main()
