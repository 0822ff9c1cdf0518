"""Everything `nacosae explain` can be told, checked, and recorded in run.json.

The defaults are nacosae's own (README: "Settings: the original, `--preset line` and the
defaults" lists where and why they differ from the published method); presets are applied by
the CLI or API where options are made (`nacosae.presets`), and the resolved options are what
run.json records and `--resume` reads back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nacosae.distributed.cluster import check_ray_options
from nacosae.errors import NacosaeError
from nacosae.models.concept_images import check_num_img
from nacosae.models.downloads import DEFAULT_EMBEDDER, DEFAULT_LANGUAGE_MODEL, DEFAULT_T2I_MODEL
from nacosae.models.language import (
    HTTP_CONCURRENCY,
    HTTP_TIMEOUT,
    MAX_NEW_TOKENS,
    MIN_NEW_TOKENS,
)
from nacosae.models.preprocessing import check_image_size
from nacosae.models.residency import OFFLOAD_MODES
from nacosae.models.text2image import IMAGE_PROMPTS, IMAGE_SEEDS
from nacosae.search.controls import CLASS_NAMES, STRATEGIES
from nacosae.search.history import HISTORY_UPDATES
from nacosae.search.prompts import ANSWER_PARSING
from nacosae.search.scoring import METRICS

INITIAL_RANDOM = ("others", "any")
TOKEN_POOLING = ("cls", "mean")
LLM_OUTPUTS = ("auto", "json", "tags")
REPEATS = ("re-ask", "rescore")


@dataclass
class ExplainOptions:
    """Everything `nacosae explain` can be told (see the module docstring for the defaults)."""

    neurons: list[str]  # selections: "12", "0:100", "1,5,9", "random:50" (resolved at run time)
    save_dir: Path
    controls_root: Path
    model: str = "resnet18"
    layer: str = "avgpool"
    weights: str = "default"
    token_pooling: str = "cls"  # token sequences: class token, or "mean" over tokens
    sae: str | None = None  # a sparse autoencoder (file or SAELens folder): units are its latents
    latent_pooling: str = "auto"  # with an SAE: none, or max/mean/cls over tokens (units.py)
    image_size: int | None = None  # preprocessing overrides (None: the control store's own)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    language_model: str = DEFAULT_LANGUAGE_MODEL
    llm_url: str | None = None
    t2i_model: str = DEFAULT_T2I_MODEL
    num_img: int = 5
    num_inf_steps: int | None = None
    guidance_scale: float | str | None = None  # None: per model; "pipeline": its own default
    n_iters: int = 10
    metric: str = "auc"
    prompt: str = "main"
    summary_prompt: str = "summary"
    control_strategy: str = "full"
    embedder: str = DEFAULT_EMBEDDER
    offload: str = "auto"  # auto: the memory plan places each model; else one mode for all
    gpu_memory: float | None = None  # GiB the run may use per accelerator (None: free memory)
    t2i_batch: int | None = None  # images per text-to-image call (None: the memory plan's)
    llm_batch: int | None = None  # local LLM rows per generate call (None: the memory plan's)
    save_images: bool = True
    seed: int = 42
    device: str = "auto"
    max_new_tokens: int = MAX_NEW_TOKENS
    reasoning_chars: int | None = None  # a bound on the JSON answer's reasoning (None: tokens')
    llm_output: str = "auto"  # tags, json, or auto: json where the backend can be held to it
    llm_concurrency: int = HTTP_CONCURRENCY
    llm_timeout: float = HTTP_TIMEOUT  # seconds an --llm-url request may take, per try
    image_prompts: str = "varied"  # or "line": the original's prompt, one draw per concept
    image_seeds: str = "hashed"  # or "index": the original's starting noise, seeded 0..n-1
    initial_random: str = "others"  # random initial classes from the non-top ones, or "any"
    class_names: str = "ours"  # control classes as concepts: ours, or the original's names
    answer_parsing: str = "strict"  # or "original": the original's reading of a reply
    repeats: str = "re-ask"  # a proposal tried before: re-asked, or "rescore"d
    history_update: str = "replace"  # or "original": delete the victim, append the new one
    llm_top_k: int | None = None  # sampling: the k most likely tokens only (None: no limit)
    explanations: int = 1  # distinct significant concepts listed per unit (search/explanations.py)
    ray: str | None = None  # a Ray cluster: local, auto or an address (None: this process)
    ray_workers: int | None = None  # worker actors (None: serve's, or one per GPU / CPU slot)
    preset: list[str] = field(default_factory=list)  # names only: the settings are above
    # a named decoding constraint of the local LLM (models/language.py); the smoke preset sets
    # "smoke-tags" for its tiny LLM. Not recorded: the preset sets it again on resume.
    llm_constraint: str | None = None

    def validate(self) -> None:
        if not self.neurons:
            raise NacosaeError("no neuron given: pass --neuron-id, --neurons or --neurons-file")
        if self.metric not in METRICS:
            raise NacosaeError(f"unknown --metric {self.metric!r}: use {', '.join(METRICS)}")
        if self.control_strategy not in STRATEGIES:
            raise NacosaeError(
                f"unknown --control-strategy {self.control_strategy!r}: use {', '.join(STRATEGIES)}"
            )
        if self.offload not in ("auto", *OFFLOAD_MODES):
            raise NacosaeError(
                f"unknown --offload {self.offload!r}: use auto, {', '.join(OFFLOAD_MODES)}"
            )
        if self.gpu_memory is not None and self.gpu_memory <= 0:
            raise NacosaeError("--gpu-memory must be a positive number of GiB")
        if self.t2i_batch is not None and self.t2i_batch < 1:
            raise NacosaeError("--t2i-batch must be at least 1")
        if self.llm_batch is not None and self.llm_batch < 1:
            raise NacosaeError("--llm-batch must be at least 1")
        if self.max_new_tokens < MIN_NEW_TOKENS:
            raise NacosaeError(
                f"--max-new-tokens must be at least {MIN_NEW_TOKENS} (room for an answer)"
            )
        if self.num_inf_steps is not None and self.num_inf_steps < 1:
            raise NacosaeError("--num-inf-steps must be at least 1")
        if self.reasoning_chars is not None and self.reasoning_chars < 1:
            raise NacosaeError("--reasoning-chars must be at least 1")
        if self.reasoning_chars is not None and self.llm_output == "tags":
            raise NacosaeError(
                "--reasoning-chars bounds a JSON answer's reasoning and does nothing with "
                "--llm-output tags: drop one of them"
            )
        if self.llm_concurrency < 1:
            raise NacosaeError("--llm-concurrency must be at least 1")
        if self.llm_timeout <= 0:
            raise NacosaeError("--llm-timeout must be a positive number of seconds")
        check_num_img(self.num_img)
        check_ray_options(self.ray, self.ray_workers)
        if self.n_iters < 0:
            raise NacosaeError("--n-iters cannot be negative")
        _one_of("--image-prompts", self.image_prompts, IMAGE_PROMPTS)
        _one_of("--image-seeds", self.image_seeds, IMAGE_SEEDS)
        _one_of("initial_random", self.initial_random, INITIAL_RANDOM)
        _one_of("--token-pooling", self.token_pooling, TOKEN_POOLING)
        _one_of("--llm-output", self.llm_output, LLM_OUTPUTS)
        _one_of("--class-names", self.class_names, CLASS_NAMES)
        _one_of("--answer-parsing", self.answer_parsing, ANSWER_PARSING)
        _one_of("--repeats", self.repeats, REPEATS)
        _one_of("--history-update", self.history_update, HISTORY_UPDATES)
        if self.explanations < 1:
            raise NacosaeError("--explanations must be at least 1")
        if self.llm_top_k is not None and self.llm_top_k < 1:
            raise NacosaeError("--llm-top-k must be at least 1")
        check_image_size(self.image_size)
        if isinstance(self.guidance_scale, str) and self.guidance_scale != "pipeline":
            raise NacosaeError(
                f"--guidance-scale {self.guidance_scale!r}: give a number or 'pipeline' (the "
                "pipeline's own default)"
            )

    def needs_embedder(self) -> bool:
        """The sentence embedder is loaded for the dissimilar-class draw and to tell several
        explanations apart."""
        return self.control_strategy == "dissimilar-class" or self.explanations > 1

    def answer_format(self) -> str:
        """tags or json: `auto` is json, except for the smoke preset's tiny LLM (tags only)."""
        if self.llm_output != "auto":
            return self.llm_output
        return "tags" if self.llm_constraint is not None else "json"

    def record(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("llm_constraint")
        data["save_dir"], data["controls_root"] = str(self.save_dir), str(self.controls_root)
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ExplainOptions:
        known = {f for f in cls.__dataclass_fields__ if f != "llm_constraint"}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("preset"), str):  # run.json of nacosae 0.1: one name or null
            values["preset"] = [values["preset"]]
        values["preset"] = list(values.get("preset") or [])
        for key in ("mean", "std"):
            values[key] = tuple(values[key]) if values.get(key) else None
        values["save_dir"], values["controls_root"] = (
            Path(values["save_dir"]),
            Path(values["controls_root"]),
        )
        return cls(**values)


def _one_of(flag: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise NacosaeError(f"unknown {flag} {value!r}: use {' or '.join(choices)}")
