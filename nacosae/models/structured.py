"""Structured LLM answers: one JSON schema for every proposal, enforced where it is decoded.

Small chat models rarely keep a free-text format (`<answer>...</answer>`) and reason well at once.
With `--llm-output json` the answer is a JSON object `{"reasoning": ..., "concept": ...}`:
OpenAI-compatible servers are asked for it with `response_format` (a JSON schema; llama.cpp, vLLM
and Ollama enforce it), and local transformers models are held to it token by token by
lm-format-enforcer (its TokenEnforcer and JSON-schema parser; the adapter for the tokenizer is
here because its own transformers integration does not import with transformers 5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

REASONING_CHARS = 100  # room for "which candidates, why this one"; keeps small models brief
# one to three words of letters (and inner hyphens or apostrophes), at most 20 letters each
CONCEPT_PATTERN = r"^[A-Za-z][A-Za-z'-]{0,19}( [A-Za-z][A-Za-z'-]{0,19}){0,2}$"
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reasoning": {"type": "string", "maxLength": REASONING_CHARS},
        "concept": {"type": "string", "pattern": CONCEPT_PATTERN},
    },
    "required": ["reasoning", "concept"],
    "additionalProperties": False,
}


def response_format() -> dict[str, Any]:
    """The chat-completions `response_format` that asks a server for ANSWER_SCHEMA."""
    return {
        "type": "json_schema",
        "json_schema": {"name": "concept_proposal", "schema": ANSWER_SCHEMA, "strict": True},
    }


def tokenizer_data(tokenizer: Any) -> Any:
    """lm-format-enforcer's view of a transformers tokenizer: each regular token's text as it
    reads after another token (so leading spaces show) and whether it starts a word. Decoded in
    two batches, which takes about a second for a 50k vocabulary."""
    from lmformatenforcer import TokenEnforcerTokenizerData

    vocab_size = len(tokenizer)
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(vocab_size) if i not in special]
    anchor = tokenizer.encode("0", add_special_tokens=False)[-1]
    after_anchor = tokenizer.batch_decode([[anchor, i] for i in ids])
    alone = tokenizer.batch_decode([[i] for i in ids])
    regular = [
        (i, text[1:], len(text[1:]) > len(single))
        for i, text, single in zip(ids, after_anchor, alone, strict=True)
    ]

    def decode(tokens: list[int]) -> str:
        return tokenizer.decode(tokens).rstrip("\ufffd")  # an unfinished multi-byte character

    eos = tokenizer.eos_token_id
    return TokenEnforcerTokenizerData(regular, decode, eos, False, vocab_size)


def json_answer_constraint(data: Any) -> Callable[[int], Callable[[int, Any], list[int]]]:
    """A factory for `generate(prefix_allowed_tokens_fn=...)` (as LocalLLM's `constraint`):
    every row's reply must be an ANSWER_SCHEMA object, then end."""
    from lmformatenforcer import JsonSchemaParser, TokenEnforcer

    def for_prompt(_prompt_length: int) -> Callable[[int, Any], list[int]]:
        enforcer = TokenEnforcer(data, JsonSchemaParser(ANSWER_SCHEMA))

        def allowed(_batch: int, input_ids: Any) -> list[int]:
            return enforcer.get_allowed_tokens(input_ids.tolist()).allowed_tokens

        return allowed

    return for_prompt
