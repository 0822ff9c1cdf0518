"""The iterative concept search, for all neurons of a run in lockstep.

Per neuron: history <- top-5 control classes by class mean + 5 random others, each rendered and
scored; repeat n times: the LLM proposes a concept from the scored history (strict parsing, at
most `max_retries` re-asks with the error stated), it is rendered, scored and enters the
history; finally the LLM unifies the top 3 into one concept, which is scored too. The
best-scored concept is the explanation.

All neurons move through the same phases together (initial, iteration 1..n, summary): each
phase asks the LLM for every neuron in one batch, renders the distinct new concepts once, then
appends the phase's events in neuron order. Concepts are cached (memory and disk), so a concept
is rendered once for all neurons and later runs. A resumed run replays the complete phases
found in events.jsonl (same RNG calls, no model calls) and computes the rest, so it ends
identical to an uninterrupted run.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nacosae import progress
from nacosae.errors import ConceptParseError
from nacosae.models.concept_images import FillCounts, FillSettings, fill_concept_cache
from nacosae.models.text2image import LINE_ANGLES, LINE_LIGHTINGS
from nacosae.search.controls import ControlSelector
from nacosae.search.history import History, Scored, normalise
from nacosae.search.prompts import PromptValues, Proposal, Template, parse_answer, re_ask
from nacosae.search.scoring import score_all
from nacosae.seeds import stable_seed
from nacosae.store.activations import classes_by_mean
from nacosae.store.runs import RunWriter

if TYPE_CHECKING:
    from nacosae.models.sides import Executor
    from nacosae.store.concepts import ConceptCache

PHASES = ("llm", "t2i", "vision", "scoring", "io")
# concepts rendered and measured per round of the concept cache: bounds the PNG bytes held in
# memory (a phase of 100 neurons needs about 500 concepts) while filling text-to-image calls
ROUND_CONCEPTS = 32
Message = dict[str, str]


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
    initial_random: str = "others"  # random initial classes from the non-top ones, or "any"
    save_images: bool = True
    t2i_batch: int = 10  # images per text-to-image call
    answer_format: str = "tags"  # how the LLM answers: tags or json (prompts and parsing)
    answer_parsing: str = "strict"  # or "original": the original project's reading of a reply
    repeats: str = "re-ask"  # a proposal tried before: re-asked, or "rescore"d (the original)
    history_update: str = "replace"  # or "original" (search/history.py)
    framing_per_render: bool = False  # the original's framing, drawn anew for every render


@dataclass
class SearchParts:
    """What the search needs, however it was built (CLI, smoke preset or the Python API)."""

    executor: Executor  # the model side's render_pngs / activations_of_pngs, here or on Ray
    chat_many: Callable[[list[tuple[list[Message], int]]], list[str]]
    class_means: np.ndarray  # [classes, units]
    class_names: list[str]  # each control class as a concept (search/controls.py)
    controls: ControlSelector
    main_template: Template
    summary_template: Template
    concept_cache: ConceptCache


@dataclass
class Counters:
    images_rendered: int = 0
    concepts_rendered: int = 0
    cache_hits: int = 0
    llm_calls: int = 0
    parse_retries: int = 0


@dataclass
class NeuronState:
    """One neuron's search: its RNG, history, tried concepts and best-so-far curve."""

    neuron: int
    seed: int
    rng: random.Random = field(init=False)
    history: History = field(default_factory=lambda: History([]))
    tried: list[str] = field(default_factory=list)  # every scored concept, in order
    proposed: list[str] = field(default_factory=list)  # the LLM's own valid proposals
    curve: list[float] = field(default_factory=list)
    best: dict[str, Any] | None = None
    llm_calls: int = 0
    parse_retries: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(stable_seed("history", self.seed, self.neuron))

    def note(self, event: dict[str, Any]) -> None:
        """Take a scored event into the tried list, the curve and the best."""
        score = event["score"]
        self.tried.append(event["concept"])
        self.curve.append(max(score, self.curve[-1]) if self.curve else score)
        if self.best is None or score > self.best["score"]:
            keys = ("concept", "score", "iteration", "source", "metrics")
            self.best = {key: event[key] for key in keys}

    def summary(self, metric: str) -> dict[str, Any]:
        return {
            "neuron": self.neuron,
            "metric": metric,
            "best": self.best,
            "history": [{"concept": s.concept, "score": s.score} for s in self.history.sorted()],
            "best_so_far": self.curve,
            "concepts_scored": len(self.tried),
            "llm_calls": self.llm_calls,
            "parse_retries": self.parse_retries,
        }


class Replay:
    """The complete phases of an earlier attempt, handed back in order."""

    def __init__(self, events: list[dict[str, Any]], writer: RunWriter) -> None:
        self.events, self.position, self.writer = events, 0, writer
        self.live = not events  # once a phase is missing, everything after it is computed

    def take(self, expected: list[tuple[int, int]]) -> list[dict[str, Any]] | None:
        """The recorded events of a phase if all of it was recorded; otherwise cut the events
        file back to the complete phases (a phase cut short by a kill is computed again, whole)."""
        if self.live:
            return None
        chunk = self.events[self.position : self.position + len(expected)]
        if len(chunk) == len(expected) and all(
            (e["neuron"], e["iteration"]) == key for e, key in zip(chunk, expected, strict=True)
        ):
            self.position += len(expected)
            return chunk
        self.writer.keep_events(self.position)
        self.live = True
        return None


class Search:
    """Runs the search for `neurons`, appending events to the run and returning summaries."""

    def __init__(
        self,
        neurons: list[int],
        parts: SearchParts,
        settings: SearchSettings,
        writer: RunWriter,
        timer: PhaseTimer,
        recorded: list[dict[str, Any]] | None = None,
        on_phase: Callable[[int], None] = lambda iteration: None,
        counters: Counters | None = None,
    ) -> None:
        self.parts, self.settings, self.writer, self.timer = parts, settings, writer, timer
        self.states = [NeuronState(n, settings.seed) for n in neurons]
        self.counters = counters or Counters()  # this attempt's work (replayed phases excluded)
        self.activations: dict[str, np.ndarray] = {}  # concept -> [num_img, units]
        self.replay = Replay(list(recorded or []), writer)
        self.on_phase = on_phase
        self._pending: list[dict[str, Any]] = []

    # ------------------------------------------------------------ phases

    def run(self) -> dict[int, dict[str, Any]]:
        self._initial_phase()
        self._phase_done(0)
        for iteration in range(1, self.settings.n_iters + 1):
            self._proposal_phase(iteration, "llm")
            self._phase_done(iteration)
        self._proposal_phase(self.settings.n_iters + 1, "summary")
        self._phase_done(self.settings.n_iters + 1)
        return {s.neuron: s.summary(self.settings.metric) for s in self.states}

    def _phase_done(self, iteration: int) -> None:
        seconds = ", ".join(f"{k} {v:.2f} s" for k, v in self.timer.as_dict().items())
        progress.debug(f"phase {iteration} done; so far: {seconds}")
        self.on_phase(iteration)

    def _initial_phase(self) -> None:
        plans = {s.neuron: self._initial_concepts(s) for s in self.states}
        expected = [(s.neuron, 0) for s in self.states for _ in plans[s.neuron]]
        recorded = self.replay.take(expected)
        if recorded is None:
            self._ensure([self._render(s, c, 0) for s in self.states for c, _ in plans[s.neuron]])
        events = iter(recorded or [])
        for state in self.states:
            scored = []
            for concept, source in plans[state.neuron]:
                event = next(events) if recorded else self._score(state, concept, 0, source, {})
                if recorded:
                    self._replay_score(state, event)
                scored.append(Scored(concept, event["score"]))
            state.history = History(scored, self.settings.history_update)
        self._flush_live(recorded)

    def _proposal_phase(self, iteration: int, source: str) -> None:
        expected = [(s.neuron, iteration) for s in self.states]
        recorded = self.replay.take(expected)
        if recorded is not None:
            for state, event in zip(self.states, recorded, strict=True):
                self._replay_proposal(state, event)
            return
        proposals = self._ask_all(iteration, summary=source == "summary")
        self._ensure(
            [
                self._render(s, proposals[s.neuron][0].concept, iteration)  # type: ignore[union-attr]
                for s in self.states
                if proposals[s.neuron][0] is not None
            ]
        )
        for state in self.states:
            proposal, record = proposals[state.neuron]
            if proposal is None:
                self._failed(state, iteration, source, record)
                continue
            event = self._score(state, proposal.concept, iteration, source, record)
            state.proposed.append(proposal.concept)
            state.history.add(Scored(proposal.concept, event["score"]), state.rng)
        self._flush_live(None)

    def _render(self, state: NeuronState, concept: str, iteration: int) -> str:
        """The name a concept's images are rendered and cached under: the concept, or with the
        original's per-render framing the concept and that render's camera angle and lighting
        (drawn from the neuron, the iteration and the concept, so a resumed run draws the same)."""
        if not self.settings.framing_per_render:
            return concept
        rng = random.Random(
            stable_seed("framing", self.settings.seed, state.neuron, iteration, normalise(concept))
        )
        return f"{concept}, {rng.choice(LINE_ANGLES)}, {rng.choice(LINE_LIGHTINGS)}"

    def _ensure(self, concepts: list[str]) -> None:
        """Every concept's activations at hand: from memory, else from the concept cache,
        which renders and measures only what it lacks."""
        settings = self.settings
        wanted = [c for c in dict.fromkeys(concepts) if c not in self.activations]
        counts = FillCounts()
        fill = FillSettings(settings.num_img, settings.seed, settings.t2i_batch)
        self.activations.update(
            fill_concept_cache(
                self.parts.concept_cache,
                self.parts.executor,
                wanted,
                fill,
                counts,
                phase=self.timer.phase,
                round_size=ROUND_CONCEPTS * self.parts.executor.width,
            )
        )
        self.counters.images_rendered += counts.images_rendered
        self.counters.concepts_rendered += counts.concepts_rendered
        self.counters.cache_hits += counts.cache_hits

    # ------------------------------------------------------------ the LLM

    @staticmethod
    def _shown(state: NeuronState, summary: bool) -> list[Scored]:
        """The scored concepts the prompt lists (recorded in the event as `history_shown`)."""
        return state.history.top(3) if summary else state.history.sorted()

    def _prompt(self, state: NeuronState, summary: bool) -> str:
        values = PromptValues(
            scored=self._shown(state, summary),
            tried=state.tried,
            proposed=state.proposed,
            metric=self.settings.metric,
            answer_format=self.settings.answer_format,  # type: ignore[arg-type]
        )
        return self._template(summary).render(values)

    def _template(self, summary: bool) -> Template:
        return self.parts.summary_template if summary else self.parts.main_template

    def _ask_all(
        self, iteration: int, summary: bool
    ) -> dict[int, tuple[Proposal | None, dict[str, Any]]]:
        """One batched LLM call per attempt for every neuron still without a valid answer."""
        chats = {
            s.neuron: [{"role": "user", "content": self._prompt(s, summary)}] for s in self.states
        }
        refuse_repeats = self.settings.repeats == "re-ask"
        tried = {
            s.neuron: {normalise(c) for c in s.tried} if refuse_repeats else set()
            for s in self.states
        }
        shown = {
            s.neuron: [{"concept": m.concept, "score": m.score} for m in self._shown(s, summary)]
            for s in self.states
        }
        examples = self._template(summary).example_answers
        answers: dict[int, list[str]] = {s.neuron: [] for s in self.states}
        errors: dict[int, list[str]] = {s.neuron: [] for s in self.states}
        done: dict[int, tuple[Proposal | None, dict[str, Any]]] = {}
        pending = [s.neuron for s in self.states]
        for attempt in range(self.settings.max_retries + 1):
            if not pending:
                break
            requests = [
                (chats[n], stable_seed("llm", self.settings.seed, n, iteration, attempt))
                for n in pending
            ]
            with self.timer.phase("llm"):
                replies = self.parts.chat_many(requests)
            still = []
            for neuron, reply in zip(pending, replies, strict=True):
                answers[neuron].append(reply)
                try:
                    proposal = parse_answer(
                        reply,
                        tried[neuron],
                        self.settings.answer_format,  # type: ignore[arg-type]
                        examples,
                        self.settings.answer_parsing,
                    )
                except ConceptParseError as exc:  # re-ask with the problem stated
                    errors[neuron].append(str(exc))
                    chats[neuron] = re_ask(chats[neuron], reply, exc)
                    still.append(neuron)
                    continue
                done[neuron] = (
                    proposal,
                    {
                        "reasoning": proposal.reasoning,
                        "history_shown": shown[neuron],
                        "raw_answer": reply,
                        "parse_retries": attempt,
                        "parse_errors": errors[neuron],
                    },
                )
            pending = still
        for neuron in pending:
            done[neuron] = (
                None,
                {
                    "history_shown": shown[neuron],
                    "raw_answers": answers[neuron],
                    "parse_retries": len(answers[neuron]) - 1,
                    "parse_errors": errors[neuron],
                },
            )
        for state in self.states:
            state.llm_calls += len(answers[state.neuron])
            state.parse_retries += len(answers[state.neuron]) - 1
        self.counters.llm_calls += sum(len(a) for a in answers.values())
        self.counters.parse_retries += sum(len(a) - 1 for a in answers.values())
        return done

    # ------------------------------------------------------------ events

    def _initial_concepts(self, state: NeuronState) -> list[tuple[str, str]]:
        means = self.parts.class_means[:, state.neuron]
        # a class none of whose images could be read has no mean (NaN): never a concept
        order = [i for i in classes_by_mean(means) if np.isfinite(means[i])]
        top = order[: self.settings.n_top]
        rest = order if self.settings.initial_random == "any" else order[self.settings.n_top :]
        randoms = state.rng.sample(rest, min(self.settings.n_random, len(rest)))
        chosen = [(i, "initial-top") for i in top] + [(i, "initial-random") for i in randoms]
        seen: set[str] = set()
        concepts = []
        for i, source in chosen:
            concept = self.parts.class_names[i]
            if normalise(concept) not in seen:
                seen.add(normalise(concept))
                concepts.append((concept, source))
        return concepts

    def _score(
        self, state: NeuronState, concept: str, iteration: int, source: str, extra: dict[str, Any]
    ) -> dict[str, Any]:
        started = time.perf_counter()
        render = self._render(state, concept, iteration)
        acts = self.activations[render]
        with self.timer.phase("scoring"):
            control, control_info = self.parts.controls.select(state.neuron, concept, state.rng)
            metrics = score_all(control, acts[:, state.neuron])
        files: list[str] = []
        if self.settings.save_images:
            with self.timer.phase("io"):
                files = self._link_images(state.neuron, iteration, concept, render)
        score = metrics[self.settings.metric]
        event = {
            "neuron": state.neuron,
            "iteration": iteration,
            "source": source,
            "concept": concept,
            "score": score,
            "metrics": metrics,
            "control": control_info,
            "images": files,
            **({"render": render} if render != concept else {}),
            **extra,
            "scoring_seconds": round(time.perf_counter() - started, 4),
        }
        state.note(event)
        self._pending.append(event)
        return event

    def _failed(self, state: NeuronState, iteration: int, source: str, record: dict) -> None:
        self._pending.append(
            {
                "neuron": state.neuron,
                "iteration": iteration,
                "source": source,
                "status": "failed",
                "concept": None,
                "score": None,
                **record,
            }
        )

    def _flush_live(self, recorded: list | None) -> None:
        """Append the phase's events in one write (live phases only)."""
        events, self._pending = self._pending, []
        if recorded is None:
            with self.timer.phase("io"):
                self.writer.append_events(events)

    def _replay_score(self, state: NeuronState, event: dict[str, Any]) -> None:
        """Make the same RNG calls as scoring did, and take the recorded result."""
        self.parts.controls.select(state.neuron, event["concept"], state.rng)
        state.note(event)

    def _replay_proposal(self, state: NeuronState, event: dict[str, Any]) -> None:
        calls = len(event["raw_answers"]) if event.get("status") == "failed" else None
        calls = calls if calls is not None else event["parse_retries"] + 1
        state.llm_calls += calls
        state.parse_retries += calls - 1
        if event.get("status") != "failed":
            self._replay_score(state, event)
            state.proposed.append(event["concept"])
            state.history.add(Scored(event["concept"], event["score"]), state.rng)

    def _link_images(self, neuron: int, iteration: int, concept: str, render: str) -> list[str]:
        """The run's copy of the concept's images (rendered under `render`): hard links into
        the concept cache."""
        folder = self.writer.image_folder(neuron, iteration, concept)
        files = []
        for k in range(self.settings.num_img):
            target = folder / f"{k}.png"
            _link_or_copy(self.parts.concept_cache.image_path(render, k), target)
            files.append(target.relative_to(self.writer.directory).as_posix())
        return files


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` as a hard link of `source` (a copy where links fail), made under a staging
    name and renamed, so no half-written image is ever at `target`; an existing `target` is
    kept only if it is that file or as long as it (a kill or a full disk may have cut it)."""
    try:
        if os.path.samefile(source, target) or target.stat().st_size == source.stat().st_size:
            return
    except OSError:
        pass  # no target yet
    staging = target.with_name(f".{target.name}.part")
    staging.unlink(missing_ok=True)
    try:
        os.link(source, staging)
    except OSError:
        shutil.copyfile(source, staging)
    staging.replace(target)
