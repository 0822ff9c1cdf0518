"""`--ray` and `nacosae serve` on a real local Ray cluster (2 CPU slots, started once here).

The workers are real actor processes that load the smoke preset's tiny models; nothing is
mocked but the moments of failure (a worker killed, Ctrl-C)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import fresh_home

pytest.importorskip("ray")

SMOKE = ["explain", "--preset", "smoke", "--neurons", "0:3", "--n-iters", "2", "--num-img", "2"]


@pytest.fixture(scope="module")
def ray_cluster():
    from nacosae.distributed.cluster import import_ray

    ray = import_ray()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        namespace="nacosae",
        log_to_driver=False,
        logging_level="ERROR",
    )
    yield ray
    ray.shutdown()


def events_without_timings(run: Path) -> list[dict]:
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k != "scoring_seconds"} for e in events]


def explain_in(home: Path, smoke: Path, invoke, monkeypatch, *extra: str) -> Path:
    """A smoke run with its own NACOSAE_HOME (an empty concept cache: everything renders)."""
    from nacosae.config import settings

    monkeypatch.setenv("NACOSAE_HOME", str(fresh_home(home, smoke)))
    settings.cache_clear()
    result = invoke(*SMOKE, "--out", home / "runs", *extra)
    assert result.exit_code == 0, result.output
    return next((home / "runs").iterdir())


@pytest.fixture(scope="module")
def alone(tmp_path_factory, smoke_parts) -> Path:
    """The same smoke run without Ray: what every Ray run must reproduce."""
    from typer.testing import CliRunner

    from nacosae.cli import app
    from nacosae.config import settings

    home = fresh_home(tmp_path_factory.mktemp("alone"), smoke_parts)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NACOSAE_HOME", str(home))
        patch.setenv("HF_HUB_OFFLINE", "1")
        settings.cache_clear()
        result = CliRunner().invoke(app, [*SMOKE, "--out", str(home / "runs")])
        settings.cache_clear()
    assert result.exit_code == 0, result.output
    return next((home / "runs").iterdir())


def ray_daemons() -> set[int]:
    """Pids of the per-cluster processes of every local Ray cluster."""
    import psutil

    names = ("gcs_server", "raylet", "DashboardAgent", "RuntimeEnvAgent", "dashboard.py")
    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if any(name in command for name in names):
            found.add(process.info["pid"])
    return found


def run_actors(ray) -> list[str]:
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("run-")
    ]


def interrupting(method, at_call: int, name: str | None = None):
    """`method` that raises KeyboardInterrupt (Ctrl-C) on its `at_call`-th call (of the side
    method `name`, for the executor's `call`)."""
    calls = []

    def wrapper(self, *args):
        if name is None or args[0] == name:
            calls.append(1)
            if len(calls) == at_call:
                raise KeyboardInterrupt
        return method(self, *args)

    return wrapper


@pytest.mark.slow
def test_ray_local_starts_a_cluster_here_and_sigterm_ends_it_like_ctrl_c(
    invoke, monkeypatch, tmp_path
):
    """First in this file, before `ray_cluster` connects: `--ray local` starts a cluster for
    the command in this process and ends it with the command, also when SIGTERM stops it (Ray's
    init takes SIGTERM over; without ours put back, the driver died at once and its local
    cluster's agents were left running)."""
    import ray

    from nacosae.store.activations import StoreBuilder
    from tests.conftest import write_image_tree

    assert not ray.is_initialized()
    tree = write_image_tree(tmp_path / "val", classes=4, per_class=4, seed=2)
    before = ray_daemons()
    command = ["controls", "--model", "tiny_cnn", "--weights", "none", "--images", tree,
               "--shard-size", "2", "--batch-size", "1", "--ray", "local",
               "--ray-workers", "1"]  # fmt: skip
    write_shard, during = StoreBuilder.write_shard, set()

    def sigterm_after_the_first_shard(self, *args):  # what a scheduler stopping the job sends
        write_shard(self, *args)
        during.update(ray_daemons())
        os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(StoreBuilder, "write_shard", sigterm_after_the_first_shard)
        stopped = invoke(*command)
    assert stopped.exit_code == 130, stopped.output
    assert during - before, "no Ray cluster was started for the command"
    assert "rerun the same command to continue" in stopped.output
    index = Path(os.environ["NACOSAE_HOME"]) / "controls" / "tiny_cnn" / "avgpool" / "index.json"
    assert json.loads(index.read_text())["status"] == "building"
    assert not ray.is_initialized()

    def cluster_ended() -> bool:
        deadline = time.monotonic() + 30
        while ray_daemons() - before and time.monotonic() < deadline:
            time.sleep(0.5)
        return not ray_daemons() - before

    assert cluster_ended(), "the command's Ray cluster outlived it"


@pytest.mark.slow
def test_the_same_events_without_ray_with_one_worker_and_with_two_when_one_dies(
    ray_cluster, alone, invoke, monkeypatch, tmp_path, smoke_parts
):
    """1 worker, interrupted by Ctrl-C; resumed on 2 workers (the address and the worker count
    may change on resume), one of them killed: the events of a run without Ray. (One run does
    both: each worker's start costs seconds of imports.)"""
    from nacosae.config import settings
    from nacosae.distributed.pool import WorkerPool

    home = fresh_home(tmp_path / "one", smoke_parts)
    monkeypatch.setenv("NACOSAE_HOME", str(home))
    settings.cache_clear()
    with monkeypatch.context() as patch:
        patch.setattr(WorkerPool, "call", interrupting(WorkerPool.call, 2, "chat_many"))
        stopped = invoke(*SMOKE, "--out", home / "runs", "--ray", "auto", "--ray-workers", "1")
    assert stopped.exit_code == 130 and "--resume" in stopped.output
    assert run_actors(ray_cluster) == []  # Ctrl-C ended the run's worker
    one = next((home / "runs").iterdir())
    assert json.loads((one / "run.json").read_text())["status"] == "interrupted"

    completed, killed = WorkerPool.completed, []

    def kill_worker_1_first(self, method, tasks):
        if not killed:  # a real death: SIGKILL to the actor's process, mid-run
            pid = ray_cluster.get(self.slots[1].actor.pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return completed(self, method, tasks)

    monkeypatch.setattr(WorkerPool, "completed", kill_worker_1_first)
    resumed = invoke("explain", "--resume", one, "--ray", "local", "--ray-workers", "2")
    assert resumed.exit_code == 0, resumed.output
    assert killed
    record = json.loads((one / "run.json").read_text())
    assert record["status"] == "done"
    assert (record["config"]["ray"], record["config"]["ray_workers"]) == ("local", 2)
    assert record["attempts"][-1]["ray"]["replaced"] == 1
    assert events_without_timings(one) == events_without_timings(alone)
    rendered = [json.loads((r / "run.json").read_text())["totals"] for r in (alone, one)]
    assert len({t["images_rendered"] for t in rendered}) == 1  # each concept rendered once
    assert run_actors(ray_cluster) == []  # the run's workers ended with it


@pytest.mark.slow
def test_serve_keeps_the_models_warm_for_later_runs(
    ray_cluster, alone, invoke, monkeypatch, tmp_path, smoke_parts
):
    from nacosae.config import settings
    from nacosae.distributed.pool import WorkerPool

    home = fresh_home(tmp_path / "home", smoke_parts)
    monkeypatch.setenv("NACOSAE_HOME", str(home))
    settings.cache_clear()
    started = invoke("serve", "--preset", "smoke", "--workers", "2", "--idle-release", "0")
    try:
        assert started.exit_code == 0, started.output
        assert "serve-0" in started.output and "serve-1" in started.output
        result = invoke(*SMOKE, "--out", home / "runs", "--ray", "auto")
        assert result.exit_code == 0, result.output
        assert "2 warm workers" in result.output
        run = next((home / "runs").iterdir())
        record = json.loads((run / "run.json").read_text())
        assert record["attempts"][-1]["model_loads"] == 0
        assert record["attempts"][-1]["images_rendered"] > 0
        assert events_without_timings(run) == events_without_timings(alone)
        evaluate = ["evaluate", alone, "--top-k", "2", "--preset", "smoke", "--num-img", "4"]
        on_workers = invoke(*evaluate, "--out", tmp_path / "eval-ray", "--ray", "auto")
        assert on_workers.exit_code == 0, on_workers.output
        shutil.rmtree(home / "smoke" / "concepts")  # render again, here
        here = invoke(*evaluate, "--out", tmp_path / "eval-here")
        assert here.exit_code == 0, here.output
        scores = [(tmp_path / f / "evaluation.csv").read_text() for f in ("eval-ray", "eval-here")]
        assert scores[0] == scores[1] and scores[0].count("\n") > 4  # header + 4 neurons
        with monkeypatch.context() as patch:  # Ctrl-C leaves serve's workers running
            patch.setattr(WorkerPool, "call", interrupting(WorkerPool.call, 1, "chat_many"))
            stopped = invoke(*SMOKE, "--out", home / "more", "--ray", "auto")
        assert stopped.exit_code == 130
        status = invoke("serve", "--status")
        assert status.exit_code == 0
        assert "serve-0" in status.output and "serve-1" in status.output
        assert "t2i:" in status.output and "llm:" in status.output
        twice = invoke("serve", "--preset", "smoke")
        assert twice.exit_code == 1 and "already has `nacosae serve` workers" in twice.output
    finally:
        ended = invoke("serve", "--stop")
    assert ended.exit_code == 0 and "stopped 2 workers" in ended.output
    assert "no `nacosae serve` workers" in invoke("serve", "--status").output


def test_without_ray_installed_the_option_says_which_extra(
    invoke, monkeypatch, tmp_path, isolated_env
):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = invoke(*SMOKE, "--out", tmp_path / "runs", "--ray", "local")
    assert result.exit_code == 1
    assert "uv sync --extra ray" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    alone = invoke(*SMOKE, "--out", tmp_path / "runs", "--ray-workers", "2")
    assert alone.exit_code == 1 and "--ray-workers needs --ray" in alone.output
    evaluation = invoke("evaluate", "x.csv", "--ray-workers", "2")
    assert evaluation.exit_code == 2 and "with --ray" in evaluation.output
    from tests.conftest import write_image_tree

    controls = ["controls", "--model", "tiny_cnn", "--weights", "none", "--images"]
    controls.append(write_image_tree(tmp_path / "val"))
    result = invoke(*controls, "--ray", "local")
    assert result.exit_code == 1 and "uv sync --extra ray" in result.output
    assert not list(isolated_env.glob("controls/*"))  # no store begun
    result = invoke(*controls, "--ray-workers", "2")
    assert result.exit_code == 1 and "--ray-workers needs --ray" in result.output


def test_workers_run_this_interpreter_even_when_ray_was_imported_first(monkeypatch):
    """Under `uv run`, Ray ships the working directory (`.venv` included) to its workers and
    imports from that copy; it reads its switch at import, so nacosae sets it again."""
    from ray._private import ray_constants

    from nacosae.distributed.cluster import import_ray

    monkeypatch.delenv("RAY_ENABLE_UV_RUN_RUNTIME_ENV")
    monkeypatch.setattr(ray_constants, "RAY_ENABLE_UV_RUN_RUNTIME_ENV", True)  # Ray's default
    import_ray()
    assert ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV is False


def test_an_address_where_nothing_listens_is_one_line_at_once(invoke, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = invoke(*SMOKE, "--out", tmp_path / "runs", "--ray", f"127.0.0.1:{port}")
    assert result.exit_code == 1 and "nothing answers there" in result.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    result = invoke(*SMOKE, "--out", tmp_path / "runs", "--ray", "headnode")
    assert result.exit_code == 1 and "not HOST:PORT" in result.output


def test_a_worker_releases_its_models_when_idle(invoke, monkeypatch, tmp_path, isolated_env):
    """Without Ray: the worker class itself, on the smoke preset's models."""
    import time

    from nacosae.distributed.worker import ModelWorker
    from nacosae.models.cache import shared_cache
    from nacosae.presets import apply_presets, prepare
    from nacosae.search.model_side import ExplainJob
    from nacosae.search.options import ExplainOptions
    from nacosae.search.runner import check_inputs

    options = ExplainOptions(["0"], tmp_path / "runs", isolated_env / "controls")
    options = prepare(apply_presets(options, ["smoke"]), shared_cache())
    inputs = check_inputs(options)
    job = ExplainJob(
        options, inputs.versions, inputs.store.index["dtype"], inputs.recipe, inputs.readout
    )
    worker = ModelWorker(idle_release_s=0.3)
    worker.prepare(job, lead=False)
    assert {s.kind for s, _ in worker.cache.loaded()} == {"vision", "t2i"}
    deadline = time.monotonic() + 10
    while not worker.releases and time.monotonic() < deadline:
        time.sleep(0.1)
    assert worker.cache.loaded() == [] and worker.describe()["releases"] == 1
    try:
        pngs, _notes = worker.call(job.key(), "render_pngs", [("apple", 0, 2)], 0)
        assert len(pngs) == 2 and worker.loads() == 3  # loaded again when used
    finally:
        worker.close()


@pytest.mark.slow
def test_controls_on_two_workers_write_the_store_one_process_writes(
    ray_cluster, invoke, monkeypatch, tmp_path
):
    """Ctrl-C after the first shard, then a resumed build on 2 workers, one of them killed:
    the same shards, byte for byte, as one process (an unreadable image included)."""
    import torch
    from safetensors.torch import load_file

    from nacosae.config import settings
    from nacosae.distributed.pool import WorkerPool
    from nacosae.store.activations import StoreBuilder
    from tests.conftest import write_image_tree

    tree = write_image_tree(tmp_path / "val", classes=4, per_class=5, seed=3)
    (tree / "class_01" / "zz-broken.jpg").write_bytes(b"not an image")
    build = ["controls", "--model", "tiny_cnn", "--layer", "layer2", "--weights", "none",
             "--images", tree, "--shard-size", "3", "--batch-size", "2"]  # fmt: skip

    def store_in(home: Path) -> Path:
        monkeypatch.setenv("NACOSAE_HOME", str(home))
        settings.cache_clear()
        return home / "controls" / "tiny_cnn" / "layer2"

    here = store_in(tmp_path / "here")
    assert invoke(*build, "--workers", "0").exit_code == 0

    on_ray = store_in(tmp_path / "ray")
    with monkeypatch.context() as patch:
        patch.setattr(StoreBuilder, "write_shard", interrupting(StoreBuilder.write_shard, 2))
        stopped = invoke(*build, "--ray", "auto", "--ray-workers", "2")
    assert stopped.exit_code == 130 and "rerun the same command" in stopped.output
    assert run_actors(ray_cluster) == []
    index = json.loads((on_ray / "index.json").read_text())
    assert index["status"] == "building" and len(index["shards"]) == 1

    completed, killed = WorkerPool.completed, []

    def kill_worker_1_first(self, method, tasks):
        if not killed:
            pid = ray_cluster.get(self.slots[1].actor.pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return completed(self, method, tasks)

    monkeypatch.setattr(WorkerPool, "completed", kill_worker_1_first)
    resumed = invoke(*build, "--ray", "auto", "--ray-workers", "2")
    assert resumed.exit_code == 0, resumed.output
    assert killed and "resuming: 1 of 7 shards" in resumed.output
    assert run_actors(ray_cluster) == []

    ours, theirs = (json.loads((d / "index.json").read_text()) for d in (on_ray, here))
    for key in ("identity", "n_units", "n_images", "classes", "spans", "skipped", "status"):
        assert ours[key] == theirs[key], key
    assert ours["skipped"] == ["class_01/zz-broken.jpg"]
    names = [s["file"] for s in theirs["shards"]] + ["units.safetensors"]
    assert sorted(p.name for p in on_ray.iterdir()) == sorted(p.name for p in here.iterdir())
    for name in names:  # tensors, not file hashes: safetensors orders its metadata at random
        a, b = load_file(on_ray / name), load_file(here / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_serving_in_the_foreground_ends_when_serve_stop_ended_the_workers(monkeypatch):
    """`serve --ray local` waits while its workers live; `serve --stop` from another shell
    ends them, and the waiting command then ends too (here the workers' listing is scripted:
    a second cluster would cost half a minute)."""
    from types import SimpleNamespace

    from nacosae.distributed import service

    listings = [["serve-0"], ["serve-0"], []]
    stopped = []
    monkeypatch.setattr(service, "served_workers", lambda ray: listings.pop(0) if listings else [])
    monkeypatch.setattr(service, "stop_service", lambda cluster: stopped.append(cluster))
    cluster = SimpleNamespace(ray=None)
    service.serve_in_foreground(cluster, poll_s=0.0)
    assert listings == [] and stopped == [cluster]
