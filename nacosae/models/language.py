"""LLM backends that turn a chat (list of messages) into the model's reply text.

- LocalLLM: a transformers causal LM with its chat template; sampling with temperature 0.5 and
  top-p 0.9 (and top-k when asked, as transformers applies it: before the nucleus), bounded new
  tokens; each chat samples with its own seeded generator, so runs repeat
  exactly and a chat's draws do not depend on its batch (on the CPU in float32 neither do its
  replies; in half precision on a GPU the logits, and so rarely a token, may differ in the last
  bits with the batch). It takes its model from the ModelCache inside each batch
  (`with model.use()`), never holding it.
- HTTPLLM: any OpenAI-compatible chat-completions server (vLLM, Ollama, llama.cpp) at `--llm-url`,
  through the `openai` client (bounded retries with backoff on 408/409/429/5xx, connection
  errors and timeouts); the key comes from NACOSAE_LLM_API_KEY or OPENAI_API_KEY.

With `json_answers` both hold every reply to the answer schema of `models/structured.py`: the
server through `response_format`, the local model through a compiled grammar (xgrammar).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from nacosae import hub, progress
from nacosae.errors import NacosaeError
from nacosae.models.cache import ModelHandle, ModelSpec

if TYPE_CHECKING:
    from nacosae.models.backoff import BackOff
    from nacosae.models.structured import AnswerGrammar

Message = dict[str, str]
TEMPERATURE = 0.5
TOP_P = 0.9
MAX_NEW_TOKENS = 1024  # room for the chain-of-thought prompts' reasoning before the answer
MIN_NEW_TOKENS = 16  # room for an answer
LOCAL_BATCH = 16
HTTP_CONCURRENCY = 16
HTTP_RETRIES = 5
HTTP_TIMEOUT = 300.0
RETRIED_STATUSES = (408, 409, 429)  # and 5xx: what the openai client retries


class LanguageModel(Protocol):
    name: str

    def chat(self, messages: list[Message], seed: int) -> str: ...

    def chat_many(self, requests: list[tuple[list[Message], int]]) -> list[str]: ...


def is_gguf_file(model_id: str) -> bool:
    return model_id.lower().endswith(".gguf") and Path(model_id).expanduser().is_file()


def load_local_llm(spec: ModelSpec) -> LLMBundle:
    """ModelCache loader for kind 'llm': model and tokenizer from a folder, a GGUF file, the HF
    cache or the hub, at the spec's pinned revision."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nacosae.models.revisions import from_pretrained_kwargs

    progress.calm_libraries()
    source, kwargs = spec.id, from_pretrained_kwargs(spec.id, spec.revision)
    placement: dict[str, Any] = {}
    if dict(spec.options).get("load") == "direct":  # resident: no copy in host memory first
        placement["device_map"] = spec.device
    reading: AbstractContextManager[None] = nullcontext()
    if is_gguf_file(spec.id):  # transformers reads (and dequantises) llama.cpp's format
        path = Path(spec.id).expanduser().resolve()
        source, kwargs = str(path.parent), {"gguf_file": path.name, "local_files_only": True}
        reading = _gguf_read_once()
    try:
        with reading:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=getattr(torch, spec.dtype), **kwargs, **placement
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
    return LLMBundle(model.eval(), tokenizer)


@contextmanager
def _gguf_read_once() -> Iterator[None]:
    """While a GGUF model loads, parse its file once and build each tensor-name map once.

    transformers parses the whole GGUF header three times (for the tokenizer, the config and the
    weights: 8 s each for SmolLM2's 49k-token vocabulary on a laptop core) and builds the name map
    of every tensor anew (9 s); both are pure functions of their arguments, so the load shares
    them (SmolLM2-135M: 23 s -> about 7 s). Without the `gguf` package nothing is changed."""
    try:
        import gguf
    except ImportError:
        yield
        return
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[Any, ...], Any] = {}

    def shared_reader(path: Any, *args: Any) -> Any:
        key = (str(path), *args)
        if key not in readers:
            readers[key] = reader(path, *args)
        return readers[key]

    gguf.GGUFReader = shared_reader  # type: ignore[assignment,misc]
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)  # type: ignore[assignment]
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map  # type: ignore[misc]


class LLMBundle:
    """A causal LM and its tokenizer, loaded and cached together. `components` shows the cache
    which module holds the weights (to size, move or offload it)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.components = {"model": model}
        self._grammars: dict[tuple[int | None, tuple[str, ...]], AnswerGrammar] = {}
        self._constraints: dict[str, Any] = {}

    def stop_ids(self) -> list[int]:
        """The tokens that end a reply: the generation config's, else the tokenizer's."""
        found = self.model.generation_config.eos_token_id
        if found is None:
            found = self.tokenizer.eos_token_id
        return [found] if isinstance(found, int) else list(found)

    def answer_grammar(self, reasoning_chars: int | None = None) -> AnswerGrammar:
        """The JSON answer schema compiled for this tokenizer (once per reasoning bound)."""
        from nacosae.models import structured

        key = (reasoning_chars, structured.ANSWER_FIELDS)
        if key not in self._grammars:
            # the model's logits may be wider than the tokenizer, or the tokenizer hold more
            width = max(getattr(self.model.config, "vocab_size", 0) or 0, len(self.tokenizer))
            self._grammars[key] = structured.AnswerGrammar(
                self.tokenizer, width, self.stop_ids(), reasoning_chars
            )
        return self._grammars[key]

    def constraint(self, name: str) -> Any:
        """A named decoding constraint of `tiny.ANSWER_CONSTRAINTS` (the smoke LLM's tags) for
        this tokenizer, built once."""
        if name not in self._constraints:
            from nacosae.models.tiny import ANSWER_CONSTRAINTS

            if name not in ANSWER_CONSTRAINTS:
                raise NacosaeError(f"unknown LLM constraint {name!r}")
            self._constraints[name] = ANSWER_CONSTRAINTS[name](self.tokenizer)
        return self._constraints[name]


def pad_token_id(tokenizer: Any) -> int:
    """The pad id for batched generation (the end-of-sequence id if the tokenizer has none).
    Id 0 is a valid pad id."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def row_sampler(
    seeds: list[int],
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    top_k: int | None = None,
) -> Any:
    """A logits processor that samples each row's next token (temperature, the `top_k` most
    likely tokens when given, then nucleus) with that row's own generator, and leaves only that
    token open. With greedy decoding around it,
    a chat's reply depends on its own seed, not on the other chats in its batch."""
    import torch
    from transformers import LogitsProcessor

    class RowSampler(LogitsProcessor):
        def __init__(self) -> None:
            self.generators: list[torch.Generator] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if not self.generators:
                self.generators = [
                    torch.Generator(scores.device).manual_seed(seed) for seed in seeds
                ]
            ordered, order = (scores.float() / temperature).sort(dim=-1, descending=True)
            if top_k is not None and top_k < ordered.shape[-1]:
                ordered[:, top_k:] = float("-inf")
            probs = ordered.softmax(dim=-1)
            outside = probs.cumsum(dim=-1) - probs >= top_p  # beyond the nucleus (never the top)
            probs = probs.masked_fill(outside, 0.0)
            rows = zip(probs, self.generators, strict=True)
            chosen = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in rows])
            tokens = order.gather(-1, chosen)
            only = torch.full_like(scores, float("-inf"))
            return only.scatter(-1, tokens, 0.0)

    return RowSampler()


class LocalLLM:
    """`json_answers` holds every reply to the JSON answer schema (models/structured.py; its
    reasoning at most `reasoning_chars` characters when given); `constraint` names another
    decoding constraint of `LLMBundle.constraint` (the smoke preset's "smoke-tags" keeps a
    random model's replies well-formed)."""

    def __init__(
        self,
        model: ModelHandle,
        max_new_tokens: int = MAX_NEW_TOKENS,
        constraint: str | None = None,
        batch_size: int = LOCAL_BATCH,
        json_answers: bool = False,
        backoff: BackOff | None = None,
        reasoning_chars: int | None = None,
        top_k: int | None = None,
    ) -> None:
        from nacosae.models.backoff import BackOff

        self.model = model
        self.name = model.spec.id
        self.device = model.spec.device
        self.max_new_tokens = max_new_tokens
        self.constraint = constraint
        self.json_answers = json_answers
        self.reasoning_chars = reasoning_chars
        self.top_k = top_k
        self.backoff = backoff or BackOff({"llm": batch_size})

    def prepare(self) -> None:
        """Load the model and build its answer grammar now: a tokenizer that cannot write the
        JSON answer fails here, before any image is rendered."""
        bundle: LLMBundle = self.model.unplaced()
        if self.json_answers:
            bundle.answer_grammar(self.reasoning_chars)

    def chat(self, messages: list[Message], seed: int) -> str:
        return self.chat_many([(messages, seed)])[0]

    def chat_many(self, requests: list[tuple[list[Message], int]]) -> list[str]:
        """Replies in request order; chats in left-padded `generate` calls of the back-off's
        `llm` size (halved on out-of-memory). Each chat samples with its own seed, so its draws
        do not depend on its batch."""

        def rows(chunk: list[tuple[list[Message], int]]) -> list[str]:
            with self.model.use() as bundle:
                return self._generate(bundle, chunk)

        return self.backoff.run("llm", requests, rows)

    def _generate(self, bundle: LLMBundle, chats: list[tuple[list[Message], int]]) -> list[str]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        tokenizer, model = bundle.tokenizer, bundle.model
        texts = [
            tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False)
            for m, _ in chats
        ]
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        prompt_length = inputs["input_ids"].shape[1]
        processors = [row_sampler([s for _, s in chats], top_k=self.top_k)]
        extra: dict[str, Any] = {}
        if self.json_answers:
            grammar = bundle.answer_grammar(self.reasoning_chars)
            processors.insert(0, grammar.processor(prompt_length, self.max_new_tokens))
        elif self.constraint is not None:
            extra["prefix_allowed_tokens_fn"] = bundle.constraint(self.constraint)(prompt_length)
        config = GenerationConfig(
            do_sample=False,  # the row sampler draws; greedy takes the one token it leaves
            max_new_tokens=self.max_new_tokens,
            pad_token_id=pad_token_id(tokenizer),
            eos_token_id=bundle.stop_ids(),
        )
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                **extra,
                generation_config=config,
                logits_processor=LogitsProcessorList(processors),
            )
        new_tokens = output[:, prompt_length:]
        return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


@dataclass
class HTTPLLM:
    """An OpenAI-compatible chat-completions server, through the `openai` client.

    Transient failures (408, 409, 429, 5xx, connection errors, timeouts) are retried by the
    client with exponential backoff (honouring Retry-After) up to `retries` times; what still
    fails becomes one `NacosaeError`. At most `concurrency` requests are in flight.
    """

    url: str
    name: str
    max_tokens: int = MAX_NEW_TOKENS
    concurrency: int = HTTP_CONCURRENCY
    retries: int = HTTP_RETRIES
    timeout: float = HTTP_TIMEOUT
    json_answers: bool = False
    reasoning_chars: int | None = None  # a bound on the JSON answer's reasoning
    top_k: int | None = None  # sent as the `top_k` extra that vLLM, llama.cpp and Ollama read

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise NacosaeError("--llm-concurrency must be at least 1")
        self._client: Any = None

    def _base_url(self) -> str:
        base = self.url.rstrip("/")
        return base.removesuffix("/chat/completions")

    def client(self) -> Any:
        if self._client is None:
            from openai import OpenAI

            key = os.environ.get("NACOSAE_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
            self._client = OpenAI(
                base_url=self._base_url(),
                api_key=key or "none",  # local servers accept any key; the client needs one
                max_retries=self.retries,
                timeout=self.timeout,
            )
        return self._client

    def check(self) -> None:
        """Fail fast, before other models load, when nothing answers at the URL. Any HTTP
        answer will do (some servers do not list their models). An empty `name` becomes the
        server's first listed model."""
        import openai

        try:
            models = self.client().with_options(max_retries=0, timeout=10.0).models.list()
        except openai.APIStatusError:
            models = None
        except openai.APIConnectionError as exc:
            raise NacosaeError(
                f"cannot reach the LLM server at {self.url}: start it or fix --llm-url"
            ) from exc
        except (openai.APIError, AttributeError, TypeError, ValueError) as exc:
            # the openai client fails this way on a page that is not the API (HTML, text)
            raise NacosaeError(
                f"{self.url}/models is not an OpenAI-compatible API (a web page?): check "
                "--llm-url; most servers serve the API under /v1 (e.g. http://localhost:8000/v1)"
            ) from exc
        if not self.name:  # no model named: the server's own (first listed) model
            served = [m.id for m in getattr(models, "data", None) or []]
            self.name = served[0] if served else "default"

    def chat_many(self, requests: list[tuple[list[Message], int]]) -> list[str]:
        """Concurrent requests (the server batches them), replies in request order."""
        if len(requests) == 1:
            return [self.chat(*requests[0])]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            return list(pool.map(lambda r: self.chat(*r), requests))

    def chat(self, messages: list[Message], seed: int) -> str:
        import openai

        extra: dict[str, Any] = {}
        if self.json_answers:
            from nacosae.models.structured import response_format

            extra["response_format"] = response_format(self.reasoning_chars)
        if self.top_k is not None:
            extra["extra_body"] = {"top_k": self.top_k}
        try:
            reply = self.client().chat.completions.create(
                model=self.name,
                messages=messages,
                temperature=TEMPERATURE,
                top_p=TOP_P,
                max_tokens=self.max_tokens,
                seed=seed,
                **extra,
            )
        except openai.APIStatusError as exc:
            detail = _first_line(getattr(exc, "message", "") or str(exc))
            if self.json_answers and exc.status_code in (400, 422):
                raise NacosaeError(
                    f"the LLM server at {self.url} refused a JSON-schema answer "
                    f"({exc.status_code}: {detail}): use --llm-output tags"
                ) from exc
            retried = exc.status_code in RETRIED_STATUSES or exc.status_code >= 500
            after = f" after {self.retries} retries" if retried else ""
            raise NacosaeError(
                f"the LLM server at {self.url} answered {exc.status_code}{after}: {detail}"
            ) from exc
        except openai.APITimeoutError as exc:
            raise NacosaeError(
                f"the LLM server at {self.url} did not answer within {self.timeout:g} s "
                f"({self.retries} retries): check the server, or allow more with --llm-timeout"
            ) from exc
        except openai.APIConnectionError as exc:
            if not _never_connected(exc):
                raise NacosaeError(
                    f"the LLM server at {self.url} dropped the connection mid-request "
                    f"({_cause(exc)}; {self.retries} retries): check its log, it may have "
                    "crashed or run out of memory"
                ) from exc
            raise NacosaeError(
                f"cannot reach the LLM server at {self.url}: start it or fix --llm-url"
            ) from exc
        except (openai.APIError, ValueError, AttributeError, TypeError) as exc:
            # a body that is not the API's JSON (cut short, HTML): the client's parse errors
            raise NacosaeError(
                f"the LLM server at {self.url} did not answer in the chat-completions format "
                f"({type(exc).__name__}: {_first_line(str(exc))})"
            ) from exc
        try:
            content = reply.choices[0].message.content
        except (AttributeError, IndexError, TypeError) as exc:
            raise NacosaeError(
                f"the LLM server at {self.url} did not answer in the chat-completions format"
            ) from exc
        return content or ""


def _never_connected(exc: BaseException) -> bool:
    """Whether a connection error happened before any connection (refused, unknown host)."""
    cause = exc.__cause__
    while cause is not None:
        if "ConnectError" in type(cause).__name__ or isinstance(cause, ConnectionRefusedError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _cause(exc: BaseException) -> str:
    cause = exc.__cause__
    text = _first_line(str(cause) or type(cause).__name__) if cause else type(exc).__name__
    return text.rstrip(".")


def _first_line(text: str) -> str:
    return (text.strip().splitlines() or [""])[0][:200]
