"""LLM backends that turn a chat (list of messages) into the model's reply text.

- LocalLLM: a transformers causal LM with its chat template; sampling with temperature 0.5 and
  top-p 0.9, bounded new tokens, the torch RNG seeded per call so runs repeat exactly.
- HTTPLLM: any OpenAI-compatible chat-completions server (vLLM, Ollama, llama.cpp) at `--llm-url`;
  the key comes from NACOSAE_LLM_API_KEY or OPENAI_API_KEY.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

from nacosae import hub
from nacosae.errors import NacosaeError
from nacosae.models.cache import ModelSpec

Message = dict[str, str]
TEMPERATURE = 0.5
TOP_P = 0.9
MAX_NEW_TOKENS = 384


class LanguageModel(Protocol):
    name: str

    def chat(self, messages: list[Message], seed: int) -> str: ...

    def chat_many(self, requests: list[tuple[list[Message], int]]) -> list[str]: ...


LOCAL_BATCH = 16


def load_local_llm(spec: ModelSpec) -> tuple[Any, Any]:
    """ModelCache loader for kind 'llm': (model, tokenizer) from the HF cache or the hub."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"cache_dir": hub.cache_dir(), "local_files_only": hub.offline()}
    if spec.revision:
        kwargs["revision"] = spec.revision
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.id, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            spec.id, dtype=getattr(torch, spec.dtype), **kwargs
        )
    except Exception as exc:  # noqa: BLE001 - every loading failure becomes one clear line
        text = str(exc).splitlines()[0]
        if hub.offline() or "offline" in text.lower() or "local" in text.lower():
            raise hub.HubError(
                f"language model {spec.id} is not cached for offline use: run `nacosae download "
                f"models --language-model {spec.id}` with network access first"
            ) from exc
        raise hub.HubError(f"cannot load language model {spec.id!r}: {text}") from exc
    if tokenizer.chat_template is None:
        raise NacosaeError(f"{spec.id} has no chat template: use an instruction-tuned model")
    return model.eval(), tokenizer


class _ModelAndTokenizer:
    """Lets the ModelCache size and move a (model, tokenizer) pair like a module."""

    def __init__(self, pair: tuple[Any, Any]) -> None:
        self.model, self.tokenizer = pair
        self.components = {"model": self.model}

    def to(self, device: str) -> _ModelAndTokenizer:
        self.model.to(device)
        return self


def cached_llm_loader(spec: ModelSpec) -> _ModelAndTokenizer:
    return _ModelAndTokenizer(load_local_llm(spec))


class LocalLLM:
    """`constraint`, if given, maps the prompt length to a `prefix_allowed_tokens_fn` for
    `generate` (used by the smoke preset to keep a random model's replies well-formed)."""

    def __init__(
        self,
        bundle: Any,
        name: str,
        device: str,
        max_new_tokens: int = MAX_NEW_TOKENS,
        constraint: Any = None,
    ) -> None:
        self.bundle = bundle
        self.name = name
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.constraint = constraint

    def chat(self, messages: list[Message], seed: int) -> str:
        return self.chat_many([(messages, seed)])[0]

    def chat_many(self, requests: list[tuple[list[Message], int]]) -> list[str]:
        """Replies in request order; up to LOCAL_BATCH chats per left-padded `generate` call.
        A batch's sampling is seeded from its requests' seeds, so the same batch gives the same
        replies."""
        from nacosae.models.text2image import stable_seed

        replies: list[str] = []
        for start in range(0, len(requests), LOCAL_BATCH):
            chunk = requests[start : start + LOCAL_BATCH]
            seed = chunk[0][1] if len(chunk) == 1 else stable_seed(*(s for _, s in chunk))
            replies.extend(self._generate([m for m, _ in chunk], seed))
        return replies

    def _generate(self, chats: list[list[Message]], seed: int) -> list[str]:
        import torch

        tokenizer, model = self.bundle.tokenizer, self.bundle.model
        texts = [
            tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
            for m in chats
        ]
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        extra: dict[str, Any] = {}
        if self.constraint is not None:
            extra["prefix_allowed_tokens_fn"] = self.constraint(inputs["input_ids"].shape[1])
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                **extra,
                do_sample=True,
                temperature=TEMPERATURE,
                top_p=TOP_P,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


@dataclass
class HTTPLLM:
    """An OpenAI-compatible `/chat/completions` endpoint."""

    url: str
    name: str
    timeout: float = 120.0
    max_tokens: int = MAX_NEW_TOKENS

    def _endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"

    def chat_many(self, requests: list[tuple[list[Message], int]]) -> list[str]:
        """Concurrent requests (the server batches them), replies in request order."""
        from concurrent.futures import ThreadPoolExecutor

        if len(requests) == 1:
            return [self.chat(*requests[0])]
        with ThreadPoolExecutor(max_workers=min(16, len(requests))) as pool:
            return list(pool.map(lambda r: self.chat(*r), requests))

    def chat(self, messages: list[Message], seed: int) -> str:
        body = {
            "model": self.name,
            "messages": messages,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "max_tokens": self.max_tokens,
            "seed": seed,
        }
        headers = {"Content-Type": "application/json"}
        key = os.environ.get("NACOSAE_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(
            self._endpoint(), data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode(errors="replace")
            raise NacosaeError(
                f"the LLM server at {self.url} answered {exc.code}: {detail}".splitlines()[0]
            ) from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise NacosaeError(
                f"cannot reach the LLM server at {self.url} ({getattr(exc, 'reason', exc)}): "
                "start it or fix --llm-url"
            ) from exc
        except json.JSONDecodeError as exc:
            raise NacosaeError(f"the LLM server at {self.url} sent invalid JSON") from exc
        try:
            return str(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError) as exc:
            raise NacosaeError(
                f"the LLM server at {self.url} did not answer in the chat-completions format"
            ) from exc
