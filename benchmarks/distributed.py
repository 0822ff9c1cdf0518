"""`--ray` and `nacosae serve` on this machine; prints JSON lines.

Smoke preset, 16 neurons, 2 iterations, each run with a fresh concept cache (everything is
rendered), as separate commands:
- wall seconds without Ray, and on a local Ray cluster of 2 workers (`--ray local`: the cluster
  and its workers start inside the command);
- the driver's scheduling seconds per rendered concept (from run.json `attempts[-1].ray`), and
  the round trip of an empty call to a worker;
- seconds from the command's start to its first image: a cold process without Ray, and
  `--ray auto` against a warm `nacosae serve`.
Run: `uv run python benchmarks/distributed.py` (about 3 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEURONS = ["--neurons", "0:16", "--n-iters", "2"]  # 16 neurons (end exclusive)
NACOSAE = [sys.executable, "-m", "nacosae"]


def environment(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "NACOSAE_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    }


def fresh_home(work: Path, name: str) -> Path:
    """A NACOSAE_HOME with the smoke models and control store built, and no concept cache."""
    home = work / name
    command = [*NACOSAE, "explain", "--preset", "smoke", "--n-iters", "0", "--out", home / "x"]
    subprocess.run([str(c) for c in command], env=environment(home), check=True,
                   capture_output=True)  # fmt: skip
    shutil.rmtree(home / "smoke" / "concepts")
    shutil.rmtree(home / "x")
    return home


def explain(home: Path, *extra: str) -> dict[str, float]:
    """Run `explain` to the end; wall seconds and seconds until its first image was written."""
    out = home / "runs"
    command = [*NACOSAE, "explain", "--preset", "smoke", *NEURONS, "--out", str(out), *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=environment(home), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    first = None
    while process.poll() is None:
        if first is None and any(out.glob("*/images/*/*/*.png")):
            first = time.perf_counter() - started
        time.sleep(0.05)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"explain failed: {process.stderr.read()[-2000:]}")
    run = next(out.iterdir())
    record = json.loads((run / "run.json").read_text())
    shutil.rmtree(out)
    return {"wall_s": wall, "first_image_s": first or wall, "attempt": record["attempts"][-1]}


def round_trip_ms(home: Path) -> float:
    """Mean seconds of an empty call to a worker (Ray's own cost per task), in ms."""
    os.environ.update(environment(home))
    import ray

    from nacosae.distributed.cluster import connect
    from nacosae.distributed.pool import remote_worker_class

    cluster = connect("local")
    try:
        worker = remote_worker_class(ray).options(num_cpus=1).remote()
        ray.get(worker.loads.remote())
        started = time.perf_counter()
        for _ in range(200):
            ray.get(worker.loads.remote())
        return (time.perf_counter() - started) / 200 * 1000
    finally:
        cluster.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        alone = explain(fresh_home(work, "alone"))
        local = explain(fresh_home(work, "ray"), "--ray", "local", "--ray-workers", "2")
        ray_record = local["attempt"]["ray"]
        concepts = local["attempt"]["images_rendered"] / 5
        print(json.dumps({"figure": "explain_16_neurons_wall_s", "no_ray": alone["wall_s"],
                          "ray_local_2_workers": local["wall_s"],
                          "images": alone["attempt"]["images_rendered"]}))  # fmt: skip
        print(json.dumps({"figure": "scheduling_ms_per_concept",
                          "value": ray_record["schedule_seconds"] / concepts * 1000,
                          "concepts": concepts, "tasks": ray_record["tasks"]}))  # fmt: skip
        print(json.dumps({"figure": "worker_round_trip_ms",
                          "value": round_trip_ms(work / "ray")}))  # fmt: skip

        home = fresh_home(work, "warm")
        serve = subprocess.Popen([*NACOSAE, "serve", "--ray", "local", "--preset", "smoke",
                                  "--workers", "2"], env=environment(home),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)  # fmt: skip
        try:
            for line in serve.stdout:  # type: ignore[union-attr]
                if "serving;" in line:
                    break
            warm = explain(home, "--ray", "auto")
        finally:
            serve.terminate()
            serve.wait(timeout=60)
        cold = explain(fresh_home(work, "cold"))
        print(json.dumps({"figure": "seconds_to_first_image", "cold_process": cold["first_image_s"],
                          "warm_serve": warm["first_image_s"],
                          "warm_model_loads": warm["attempt"]["model_loads"],
                          "cold_model_loads": cold["attempt"]["model_loads"]}))  # fmt: skip
        print(json.dumps({"figure": "explain_16_neurons_wall_s_warm_serve",
                          "value": warm["wall_s"]}))  # fmt: skip


if __name__ == "__main__":
    main()
