"""Structured LLM answers: one JSON schema for every proposal, enforced where it is decoded.

Small chat models rarely keep a free-text format (`<answer>...</answer>`) and reason well at once.
With `--llm-output json` the answer is a JSON object of a concept and the reasoning behind it:
OpenAI-compatible servers are asked for it with `response_format` (a JSON schema; vLLM,
llama.cpp and Ollama enforce it), and local transformers models are held to it token by token
by xgrammar. The schema is compiled once per tokenizer (`AnswerGrammar`); at every decoding step
one token bitmask for the whole batch is filled in C++ and applied to the logits in one call.

Special tokens (a tokenizer's added control tokens, `<|eot_id|>` and the like) are never part
of the grammar's text, so they cannot appear inside a string; the end-of-sequence tokens are
allowed once the object is complete. The reasoning is bounded by the token budget, not by a
character count: when a row's budget is nearly spent inside a string, only tokens that close it
remain (after those that finish a multi-byte character), so the answer still completes.
`reasoning_chars` adds a character bound for a small model that needs one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from nacosae.errors import NacosaeError

# one to three words of letters (and inner hyphens or apostrophes), at most 20 letters each
CONCEPT_PATTERN = r"^[A-Za-z][A-Za-z'-]{0,19}( [A-Za-z][A-Za-z'-]{0,19}){0,2}$"
# the order the model writes them: the concept first gave SmolLM2-135M far more usable concepts
# than the reasoning first (benchmarks/llm.py); chain of thought before the answer is `tags`
ANSWER_FIELDS = ("concept", "reasoning")
SEPARATORS = (", ", ": ")  # json.dumps's own: what models write and our prompts show
# tokens kept in reserve inside the first field's string: enough to close it and write the
# second field (`, "reasoning": "` and a little, or `, "concept": "red apple"`) and the `}`
CLOSING_TOKENS = 24
# and inside the last string: the rest of a character begun (up to 3 bytes), the closing quote,
# the `}` and the end token
FINAL_TOKENS = 6


def answer_schema(
    reasoning_chars: int | None = None, fields: Sequence[str] | None = None
) -> dict[str, Any]:
    """The answer object, its properties in `fields` order (default ANSWER_FIELDS, read when
    called: benchmarks/llm.py measures both orders), the order the grammar imposes."""
    fields = fields or ANSWER_FIELDS
    reasoning: dict[str, Any] = {"type": "string"}
    if reasoning_chars is not None:
        # a pattern, not maxLength: xgrammar (also vLLM's engine) reads maxLength as any
        # character, raw tabs and control characters included, which no JSON parser accepts;
        # the pattern allows what a JSON string holds without escapes
        reasoning["pattern"] = f'^[^\\x00-\\x1f"\\\\]{{0,{reasoning_chars}}}$'
    properties = {"reasoning": reasoning, "concept": {"type": "string", "pattern": CONCEPT_PATTERN}}
    return {
        "type": "object",
        "properties": {name: properties[name] for name in fields},
        "required": list(fields),
        "additionalProperties": False,
    }


def response_format(reasoning_chars: int | None = None) -> dict[str, Any]:
    """The chat-completions `response_format` that asks a server for the answer schema (with
    maxLength beside the pattern too, for servers that read only maxLength)."""
    schema = answer_schema(reasoning_chars)
    if reasoning_chars is not None:
        schema["properties"]["reasoning"]["maxLength"] = reasoning_chars
    return {
        "type": "json_schema",
        "json_schema": {"name": "concept_proposal", "schema": schema, "strict": True},
    }


class AnswerGrammar:
    """The answer schema compiled for one tokenizer: build it once per loaded LLM (it reads the
    whole vocabulary). Building it checks that the tokenizer can write an answer at all, so a
    tokenizer that cannot is one clear error when the LLM loads, not a stalled decode."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        stop_ids: Sequence[int],
        reasoning_chars: int | None = None,
        fields: Sequence[str] | None = None,
    ) -> None:
        import xgrammar as xgr

        fields = tuple(fields or ANSWER_FIELDS)
        self.vocab_size, self.stop_ids = vocab_size, [int(i) for i in stop_ids]
        info = _tokenizer_info(tokenizer, vocab_size, self.stop_ids)
        schema = json.dumps(answer_schema(reasoning_chars, fields))
        compiler = xgr.GrammarCompiler(info, max_threads=1)
        self.compiled = compiler.compile_json_schema(
            schema, any_whitespace=False, separators=SEPARATORS
        )
        self.pieces: list[bytes] = info.decoded_vocab  # each token's bytes in a reply
        self.closers = [i for i, piece in enumerate(self.pieces) if piece.startswith(b'"')]
        self.whole = [i for i, piece in enumerate(self.pieces) if _ends_whole(piece)]
        self._bits: tuple[Any, Any] | None = None
        self.first_opens = json.dumps({fields[0]: ""}, separators=SEPARATORS)[1:-2].encode()
        self._check_writable(tokenizer, fields, reasoning_chars)

    def _check_writable(
        self, tokenizer: Any, fields: Sequence[str], reasoning_chars: int | None
    ) -> None:
        """Walk one well-formed answer, tokenised by the tokenizer itself, through the grammar."""
        import xgrammar as xgr

        reasoning = "The best ones share a colour."[:reasoning_chars]
        values = {"reasoning": reasoning, "concept": "red apple"}
        example = json.dumps({f: values[f] for f in fields}, separators=SEPARATORS)
        matcher = xgr.GrammarMatcher(self.compiled)
        ids = tokenizer.encode(example, add_special_tokens=False)
        walked = all(matcher.accept_token(i) for i in ids) and any(
            matcher.accept_token(i) for i in self.stop_ids[:1]
        )
        if not walked or not matcher.is_terminated():
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise NacosaeError(
                f"the tokenizer of {name} cannot write the JSON answer ({example!r} does not "
                "survive its tokens): use --llm-output tags"
            )

    def guard_bits(self) -> tuple[Any, Any]:
        """The budget guard's token sets packed as xgrammar packs its bitmask (bit i % 32 of
        int32 word i // 32 set: allowed), built once: tokens that start with a quote, tokens
        that end on a character boundary."""
        import numpy as np
        import torch

        if self._bits is None:
            packed = []
            for ids in (self.closers, self.whole):
                words = -(-self.vocab_size // 32)
                flags = np.zeros(words * 32, dtype=np.uint8)
                flags[ids] = 1
                bits = np.packbits(flags, bitorder="little").view(np.int32)
                packed.append(torch.from_numpy(bits.copy()))
            self._bits = (packed[0], packed[1])
        return self._bits

    def processor(self, prompt_length: int, max_new_tokens: int) -> Any:
        """A fresh logits processor for one `generate` call (it keeps each row's state)."""
        return json_answer_processor(self, prompt_length, max_new_tokens)

    def inside_first_field(self, reply: Sequence[int]) -> bool:
        """Whether the reply so far stops inside the first field's string (or before it)."""
        text = b"".join(self.pieces[i] for i in reply)
        start = text.find(self.first_opens)
        if start < 0:
            return True
        escaped = False
        for byte in text[start + len(self.first_opens) :]:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # a backslash escapes the next character
                escaped = True
            elif byte == 0x22:  # an unescaped quote ends the string
                return False
        return True


def _ends_whole(piece: bytes) -> bool:
    """Whether a token's bytes end on a character boundary (no UTF-8 sequence left open): in
    the middle of a character the closing quote must wait, and such tokens finish it without
    opening another."""
    for back, byte in enumerate(reversed(piece[-4:]), 1):
        if byte & 0xC0 != 0x80:  # the last lead or ASCII byte: is its sequence complete?
            needed = 1 if byte < 0x80 else 2 if byte >> 5 == 6 else 3 if byte >> 4 == 14 else 4
            return back >= needed
    return True  # continuation bytes only: they finish a character begun before


def _tokenizer_info(tokenizer: Any, vocab_size: int, stop_ids: list[int]) -> Any:
    """xgrammar's view of the tokenizer with every special token blanked out (xgrammar reads
    added tokens as text, so `<|eot_id|>` would be allowed inside a string); the stop tokens
    stay, as the only way to end."""
    import xgrammar as xgr

    detected = xgr.TokenizerInfo.from_huggingface(
        tokenizer, vocab_size=vocab_size, stop_token_ids=stop_ids
    )
    special = {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    special |= set(tokenizer.all_special_ids)
    encoded = [""] * vocab_size
    for token, index in tokenizer.get_vocab().items():
        if index < vocab_size and index not in special:
            encoded[index] = token
    return xgr.TokenizerInfo(
        encoded,
        detected.vocab_type,
        vocab_size=vocab_size,
        stop_token_ids=stop_ids,
        add_prefix_space=detected.add_prefix_space,
    )


def json_answer_processor(grammar: AnswerGrammar, prompt_length: int, max_new_tokens: int) -> Any:
    """The transformers logits processor for one `generate` call (defined on first use: torch
    and transformers are imported only where an LLM runs)."""
    import torch
    import xgrammar as xgr
    from transformers import LogitsProcessor

    class JsonAnswer(LogitsProcessor):
        """Masks every unfinished row to what the grammar allows next, and near the end of a
        row's budget to tokens that close the open string (on the packed bitmask, before it
        reaches the logits: 32 tokens per operation)."""

        def __init__(self) -> None:
            self.matchers: list[Any] = []
            self.bitmask: torch.Tensor | None = None
            self.batch = xgr.BatchGrammarMatcher(max_threads=1)
            self.closing, self.whole = grammar.guard_bits()

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            rows = input_ids.shape[0]
            if not self.matchers:
                self._start(rows, scores.device)
            else:
                self._accept(input_ids[:, -1].tolist())
            active = [r for r in range(rows) if not self.matchers[r].is_terminated()]
            assert self.bitmask is not None
            self.batch.batch_fill_next_token_bitmask(
                [self.matchers[r] for r in active], self.bitmask, active
            )
            left = max_new_tokens - (input_ids.shape[1] - prompt_length)
            if left <= CLOSING_TOKENS:
                self._close_strings(input_ids, active, left)
            mask = self.bitmask.to(scores.device, non_blocking=True)
            width = grammar.vocab_size
            xgr.apply_token_bitmask_inplace(scores[:, :width], mask, indices=active)
            if scores.shape[-1] > width:  # the model's output is wider than the vocabulary
                scores[:, width:] = float("-inf")
            return scores

        def _start(self, rows: int, device: torch.device) -> None:
            self.matchers = [xgr.GrammarMatcher(grammar.compiled) for _ in range(rows)]
            bitmask = xgr.allocate_token_bitmask(rows, grammar.vocab_size)
            self.bitmask = bitmask.pin_memory() if device.type == "cuda" else bitmask

        def _accept(self, tokens: list[int]) -> None:
            live = [r for r, m in enumerate(self.matchers) if not m.is_terminated()]
            xgr.BatchGrammarMatcher.batch_accept_token(
                [self.matchers[r] for r in live], [tokens[r] for r in live]
            )

        def _close_strings(self, input_ids: torch.Tensor, active: list[int], left: int) -> None:
            """Rows in the first field's string with CLOSING_TOKENS left, or in any string
            with FINAL_TOKENS left, keep only the allowed tokens that start with a quote; in
            the middle of a character, those that finish it."""
            assert self.bitmask is not None
            generated = input_ids[:, prompt_length:].tolist() if left > FINAL_TOKENS else None
            for row in active:
                if generated is not None and not grammar.inside_first_field(generated[row]):
                    continue
                for preferred in (self.closing, self.whole):
                    keep = self.bitmask[row] & preferred
                    if bool(keep.any()):
                        self.bitmask[row] = keep
                        break

    return JsonAnswer()
