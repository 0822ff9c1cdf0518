"""Many neurons in one run: selections, the shared concept cache, batched proposals, resume."""

import hashlib
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nacosae.errors import NacosaeError, NeuronOutOfRange
from nacosae.search.neurons import parse_spec, read_neurons_file, resolve
from nacosae.store.concepts import ConceptCache, ConceptKeys
from tests.chatserver import ChatServer
from tests.killing import kill_cli_when
from tests.test_explain import events_of, explain_args, only_run

GENERATION = {"model_id": "m", "num_inference_steps": 2, "guidance_scale": 0.0, "seed": 42}
VISION = {"model": "tiny_cnn", "weights": "w", "layer": "avgpool", "dtype": "float32"}


def test_selections():
    assert parse_spec("0:5", 100, 42) == [0, 1, 2, 3, 4]
    assert parse_spec("0:10:3,50,7", 100, 42) == [0, 3, 6, 9, 50, 7]
    random.seed(42)
    cosy = random.sample(range(2048), 50)  # CoSy's choice of units
    assert parse_spec("random:50", 2048, 42) == cosy
    assert parse_spec("random:50", 2048, 7) != cosy
    assert resolve(["3", "1:4"], 10, 42, "layer") == [3, 1, 2]
    with pytest.raises(NeuronOutOfRange, match="valid ids are 0 to 9"):
        resolve(["5:12"], 10, 42, "layer avgpool of m")
    with pytest.raises(NacosaeError, match="bad neuron selection 'x1'"):
        parse_spec("x1", 10, 42)
    with pytest.raises(NeuronOutOfRange, match="goes past the layer's 512 units"):
        parse_spec("0:2000000", 512, 42)  # refused before the range is expanded


def test_neurons_file(tmp_path):
    path = tmp_path / "units.txt"
    path.write_text("# units to explain\n3 4\n10:12, 20\n")
    assert parse_spec(read_neurons_file(path), 100, 42) == [3, 4, 10, 11, 20]
    with pytest.raises(NacosaeError, match="does not exist"):
        read_neurons_file(tmp_path / "missing.txt")


def test_concept_cache_keys_any_setting_change_is_a_miss(tmp_path):
    store = ConceptCache(tmp_path, ConceptKeys(GENERATION, VISION))
    store.save_images("red apple", 0, [Image.new("RGB", (8, 8), "red")] * 2)
    store.save_activations("red apple", np.ones((2, 4), dtype=np.float32))
    same = ConceptCache(tmp_path, ConceptKeys(dict(GENERATION), dict(VISION)))
    assert same.image_count("red apple") == 2
    assert same.load_activations("red apple", 2).shape == (2, 4)
    assert same.load_activations("red apple", 3) is None  # fewer stored than needed
    assert same.image_count("Red apple") == 0  # the prompt text differs: another entry
    for key, value in [("num_inference_steps", 4), ("guidance_scale", 1.0), ("seed", 1),
                       ("model_id", "other")]:  # fmt: skip
        changed = ConceptCache(tmp_path, ConceptKeys({**GENERATION, key: value}, VISION))
        assert changed.image_count("red apple") == 0, key
    for key, value in [("weights", "w2"), ("layer", "layer3"), ("dtype", "float16")]:
        other_model = ConceptCache(tmp_path, ConceptKeys(GENERATION, {**VISION, key: value}))
        assert other_model.image_count("red apple") == 2  # same images...
        assert other_model.load_activations("red apple", 2) is None, key  # ...new activations


WRITER = """
import sys
import numpy as np
from PIL import Image
from nacosae.store.concepts import ConceptKeys, ConceptCache
store = ConceptCache(sys.argv[1], ConceptKeys({"model_id": "m"}, {"model": "v"}))
for _ in range(30):
    store.save_images("shared concept", 0, [Image.new("RGB", (64, 64), "blue")] * 3)
    store.save_activations("shared concept", np.full((3, 256), 2.0, dtype=np.float32))
"""


def test_two_processes_writing_one_entry(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)]) for _ in range(2)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    store = ConceptCache(tmp_path, ConceptKeys({"model_id": "m"}, {"model": "v"}))
    assert store.image_count("shared concept") == 3
    assert (store.load_activations("shared concept", 3) == 2.0).all()
    assert [im.getpixel((0, 0)) for im in store.load_images("shared concept", 3)] == [
        (0, 0, 255)
    ] * 3
    assert not list(store.folder("shared concept").glob("*.tmp-*"))


def test_many_neurons_share_concepts_and_batch_proposals(invoke, image_tree, t2i_dir, tmp_path):
    assert invoke("controls", "--model", "tiny_cnn", "--images", image_tree).exit_code == 0

    def replies(messages):  # the same prompt gets the same answer, in both runs
        digest = hashlib.sha256(messages[-1]["content"].encode()).hexdigest()[:6]
        return f"<thinking>t</thinking><answer>thing {digest}</answer>"

    with ChatServer(replies) as server:
        result = invoke(*explain_args(t2i_dir, server, "--neurons", "0:4"))
        assert result.exit_code == 0, result.output
        run = only_run(tmp_path / "runs")
        record = json.loads((run / "run.json").read_text())
        events = events_of(run)
        concepts = {e["concept"] for e in events}
        # 3 class concepts shared by all 4 neurons + one new concept per neuron and phase
        assert len(events) == 4 * 3 + 4 * 3
        assert record["totals"]["images_rendered"] == 2 * len(concepts)
        assert record["totals"]["llm_calls"] == 12 and len(server.requests) == 12
        assert record["totals"]["parse_retries"] == 0
        order = [(e["iteration"], e["neuron"]) for e in events]
        assert order == sorted(order)  # phases in lockstep, neurons in order within a phase
        summary = json.loads((run / "summary.json").read_text())
        assert set(summary["neurons"]) == {"0", "1", "2", "3"}
        # the same run again: every concept comes from the cache on disk
        again_args = explain_args(t2i_dir, server, "--neurons", "0:4", "--out", tmp_path / "b")
        again = invoke(*again_args)
    assert again.exit_code == 0, again.output
    second = json.loads((only_run(tmp_path / "b") / "run.json").read_text())
    assert second["totals"]["images_rendered"] == 0
    assert second["totals"]["cache_hits"] > 0
    assert "neuron" in result.output and "best concept" in result.output


def test_resume_needs_a_run_directory(invoke, tmp_path):
    result = invoke("explain", "--resume", tmp_path)
    assert result.exit_code == 1
    assert "not a run directory" in result.output


def strip_timings(events):
    return [{k: v for k, v in e.items() if k != "scoring_seconds"} for e in events]


@pytest.mark.slow
def test_sigkilled_multi_neuron_run_resumes_to_the_same_result(invoke, tmp_path, monkeypatch):
    args = ["explain", "--preset", "smoke", "--neurons", "0:2", "--n-iters", "4"]
    killed = tmp_path / "killed"
    env = {**os.environ, "SAVE_DIR": str(killed)}

    def phases_on_disk() -> bool:  # the initial phase and at least one iteration
        runs = list(killed.glob("*/events.jsonl")) if killed.is_dir() else []
        return bool(runs) and len(runs[0].read_text().splitlines()) >= 22

    assert kill_cli_when(args, env, phases_on_disk, timeout=240), "the run ended first"
    run = only_run(killed)
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    listed = invoke("report", killed, "--format", "csv")
    assert ",stale," in listed.output  # its process is gone: not "running" forever

    refused = invoke("explain", "--resume", run, "--n-iters", "9", "--model", "resnet50")
    assert refused.exit_code == 2 and "--model, --n-iters cannot be given" in refused.output
    resumed = invoke("explain", "--resume", run)
    assert resumed.exit_code == 0, resumed.output
    whole = invoke(*args, "--out", tmp_path / "whole")
    assert whole.exit_code == 0, whole.output
    other = only_run(tmp_path / "whole")
    assert strip_timings(events_of(run)) == strip_timings(events_of(other))
    a = json.loads((run / "summary.json").read_text())
    b = json.loads((other / "summary.json").read_text())
    assert a["neurons"] == b["neurons"]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done" and record["resumes"] == 1
    assert invoke("explain", "--resume", run).exit_code == 1  # done: nothing to resume
