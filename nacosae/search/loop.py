"""The iterative concept search for one unit.

history <- top-5 control classes by class mean + 5 random others, each rendered and scored;
repeat n times: the LLM proposes a concept from the scored history (strict parsing, at most
`max_retries` re-asks with the error stated), it is rendered and scored, and enters the history;
finally the LLM unifies the top 3 into one concept, which is scored too. The best-scored concept
is the explanation. Every scored concept is one event in events.jsonl.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nacosae.models.text2image import stable_seed
from nacosae.search.controls import ControlSelector, class_concept
from nacosae.search.history import History, Scored, normalise
from nacosae.search.prompts import (
    Template,
    format_concepts,
    format_forbidden,
    parse_answer,
)
from nacosae.search.scoring import score_all
from nacosae.store.runs import RunWriter

PHASES = ("llm", "t2i", "vision", "scoring", "io")


@dataclass
class PhaseTimer:
    """Seconds per phase (llm, t2i, vision, scoring, io), for run.json and the benchmarks."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def as_dict(self) -> dict[str, float]:
        return {p: round(self.seconds.get(p, 0.0), 4) for p in PHASES}


@dataclass
class SearchSettings:
    n_iters: int = 10
    num_img: int = 5
    metric: str = "auc"
    seed: int = 42
    n_top: int = 5
    n_random: int = 5
    max_retries: int = 3
    save_images: bool = True


@dataclass
class SearchParts:
    """What the loop needs, however it was built (CLI, smoke preset or the Python API)."""

    render: Callable[[str, int, int], list[Any]]  # (concept, n, seed) -> PIL images
    activations: Callable[[list[Any]], np.ndarray]  # PIL images -> [n, units]
    chat: Callable[[list[dict[str, str]], int], str]  # (messages, seed) -> reply
    class_means: np.ndarray  # [classes, units]
    classes: list[dict[str, Any]]
    controls: ControlSelector
    main_template: Template
    summary_template: Template


class ConceptCache:
    """Each concept is rendered and pushed through the model once per run; every neuron and
    iteration that needs it reuses the activations of all units."""

    def __init__(self, parts: SearchParts, settings: SearchSettings, timer: PhaseTimer) -> None:
        self.parts, self.settings, self.timer = parts, settings, timer
        self.entries: dict[str, tuple[np.ndarray, list[Any]]] = {}
        self.images_rendered = 0

    def get(self, concept: str) -> tuple[np.ndarray, list[Any]]:
        key = normalise(concept)
        if key not in self.entries:
            with self.timer.phase("t2i"):
                images = self.parts.render(concept, self.settings.num_img, self.settings.seed)
            self.images_rendered += len(images)
            with self.timer.phase("vision"):
                acts = self.parts.activations(images)
            self.entries[key] = (acts, images)
        return self.entries[key]


@dataclass
class NeuronSearch:
    neuron: int
    parts: SearchParts
    settings: SearchSettings
    writer: RunWriter
    cache: ConceptCache
    timer: PhaseTimer
    on_event: Callable[[dict[str, Any]], None] = lambda event: None

    def __post_init__(self) -> None:
        self.rng = random.Random(stable_seed("history", self.settings.seed, self.neuron))
        self.tried: list[str] = []
        self.curve: list[float] = []
        self.best: dict[str, Any] | None = None
        self.llm_calls = 0
        self.parse_retries = 0

    # ------------------------------------------------------------ scoring one concept

    def score(self, concept: str, iteration: int, source: str, extra: dict[str, Any]) -> Scored:
        started = time.perf_counter()
        acts, images = self.cache.get(concept)
        with self.timer.phase("scoring"):
            control, control_info = self.parts.controls.select(self.neuron, concept, self.rng)
            metrics = score_all(control, acts[:, self.neuron])
        files: list[str] = []
        if self.settings.save_images:
            with self.timer.phase("io"):
                folder = self.writer.image_folder(self.neuron, iteration, concept)
                for k, image in enumerate(images):
                    path = folder / f"{k}.png"
                    if not path.exists():
                        image.save(path)
                    files.append(path.relative_to(self.writer.directory).as_posix())
        score = metrics[self.settings.metric]
        self.tried.append(concept)
        self.curve.append(max(score, self.curve[-1]) if self.curve else score)
        if self.best is None or score > self.best["score"]:
            self.best = {
                "concept": concept,
                "score": score,
                "iteration": iteration,
                "source": source,
            }
        event = {
            "neuron": self.neuron,
            "iteration": iteration,
            "source": source,
            "concept": concept,
            "score": score,
            "metrics": metrics,
            "control": control_info,
            "images": files,
            **extra,
            "seconds": round(time.perf_counter() - started, 4),
        }
        with self.timer.phase("io"):
            self.writer.append_event(event)
        self.on_event(event)
        return Scored(concept, score)

    # ------------------------------------------------------------ asking the LLM

    def ask(
        self, prompt: str, iteration: int, allow_tried: bool = False
    ) -> tuple[Any, dict[str, Any]]:
        """A valid proposal (or None) and the record of the exchange. The summary step may
        name a concept that was tried already (`allow_tried`)."""
        messages = [{"role": "user", "content": prompt}]
        answers: list[str] = []
        errors: list[str] = []
        tried = set() if allow_tried else {normalise(c) for c in self.tried}
        for attempt in range(self.settings.max_retries + 1):
            seed = stable_seed("llm", self.settings.seed, self.neuron, iteration, attempt)
            with self.timer.phase("llm"):
                reply = self.parts.chat(messages, seed)
            self.llm_calls += 1
            answers.append(reply)
            try:
                proposal = parse_answer(reply, tried)
            except Exception as exc:  # ConceptParseError: re-ask with the problem stated
                errors.append(str(exc))
                if attempt == self.settings.max_retries:
                    break
                self.parse_retries += 1
                messages = [
                    *messages,
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": f"That answer cannot be used: {exc}. Try again."},
                ]
                continue
            record = {
                "reasoning": proposal.reasoning,
                "raw_answer": reply,
                "parse_retries": attempt,
                "parse_errors": errors,
            }
            return proposal, record
        return None, {"raw_answers": answers, "parse_retries": len(errors), "parse_errors": errors}

    def failed_proposal(self, iteration: int, source: str, record: dict[str, Any]) -> None:
        event = {
            "neuron": self.neuron,
            "iteration": iteration,
            "source": source,
            "status": "failed",
            "concept": None,
            "score": None,
            **record,
        }
        with self.timer.phase("io"):
            self.writer.append_event(event)
        self.on_event(event)

    # ------------------------------------------------------------ the search

    def initial_concepts(self) -> list[tuple[str, str]]:
        means = self.parts.class_means[:, self.neuron]
        order = [int(i) for i in np.argsort(-np.nan_to_num(means, nan=-np.inf), kind="stable")]
        top = order[: self.settings.n_top]
        rest = [i for i in order if i not in top]
        randoms = self.rng.sample(rest, min(self.settings.n_random, len(rest)))
        chosen = [(i, "initial-top") for i in top] + [(i, "initial-random") for i in randoms]
        seen: set[str] = set()
        concepts = []
        for i, source in chosen:
            concept = class_concept(self.parts.classes[i]["label"])
            if normalise(concept) not in seen:
                seen.add(normalise(concept))
                concepts.append((concept, source))
        return concepts

    def run(self) -> dict[str, Any]:
        settings = self.settings
        history = History([self.score(c, 0, source, {}) for c, source in self.initial_concepts()])
        for iteration in range(1, settings.n_iters + 1):
            prompt = self.parts.main_template.render(
                concepts=format_concepts(history.sorted()),
                forbidden=format_forbidden(self.tried),
            )
            proposal, record = self.ask(prompt, iteration)
            if proposal is None:
                self.failed_proposal(iteration, "llm", record)
                continue
            scored = self.score(proposal.concept, iteration, "llm", record)
            history.add(scored, self.rng)
        summary_iteration = settings.n_iters + 1
        prompt = self.parts.summary_template.render(concepts=format_concepts(history.top(3)))
        proposal, record = self.ask(prompt, summary_iteration, allow_tried=True)
        if proposal is None:
            self.failed_proposal(summary_iteration, "summary", record)
        else:
            history.add(
                self.score(proposal.concept, summary_iteration, "summary", record), self.rng
            )
        return {
            "neuron": self.neuron,
            "metric": settings.metric,
            "best": self.best,
            "history": [{"concept": s.concept, "score": s.score} for s in history.sorted()],
            "best_so_far": self.curve,
            "concepts_scored": len(self.tried),
            "llm_calls": self.llm_calls,
            "parse_retries": self.parse_retries,
        }
