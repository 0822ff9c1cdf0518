"""Jobs, model sides and executors: what a command asks of its models, wherever they compute.

A *job* is a picklable description of the models a command needs (explain's, an evaluation's,
a control store build's). `job.build(cache)` makes its *model side* through a ModelCache: an
object whose methods compute with those models (render concepts, measure images, chat, compute
a shard of control activations). An *executor* calls a side's methods by name: `InProcess` in
this process, `nacosae.distributed.WorkerPool` on the worker actors of a Ray cluster, one side
per worker. The commands are written against `Executor`, so the same code runs with or without
Ray, and the executors know nothing of the commands.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from nacosae.models.cache import ModelCache


class Facts(Protocol):
    """What a side tells the command once its models are loaded."""

    @property
    def keys(self) -> Any:
        """What every worker's side must agree on (weights, concept-cache keys, ...)."""

    @property
    def device(self) -> str: ...


class ModelSide(Protocol):
    def facts(self) -> Facts: ...


class Job(Protocol):
    """A command's models, described so that any process can build them."""

    @property
    def lead_methods(self) -> tuple[str, ...]:
        """Side methods the lead side (the one `Executor.call` reaches) runs once it is built:
        explain's loads its local LLM there, so that only one worker holds it."""

    def key(self) -> str:
        """The same for two jobs that load and compute with the same models (a worker keeps
        one side per key, and later calls name the side by it)."""

    def build(self, cache: ModelCache) -> ModelSide: ...


class Executor(Protocol):
    """Runs the methods of a job's sides (see the module docstring). `notes` gathers what
    sides report beside their results (back-offs: a side's `drain_notes()`), for run.json."""

    notes: list[dict[str, Any]]

    @property
    def width(self) -> int:
        """Sides that compute at the same time (1 in process, the workers on Ray)."""

    def facts(self) -> Facts: ...

    def call(self, method: str, *args: Any) -> Any:
        """`method(*args)` on the lead side."""

    def completed(self, method: str, tasks: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        """`method(*task)` for every task, each on whichever side is free; (task index, result)
        as each finishes."""

    def model_loads(self) -> int:
        """Models loaded outside this process's cache for the command (0 in process)."""


class InProcess:
    """The executor of one side in this process (calls in order, no copies of the data)."""

    width = 1

    def __init__(self, job: Job, cache: ModelCache) -> None:
        self.notes: list[dict[str, Any]] = []
        self.side = job.build(cache)
        for method in job.lead_methods:
            getattr(self.side, method)()

    def facts(self) -> Facts:
        return self.side.facts()

    def call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.side, method)(*args)
        finally:
            self._collect()

    def completed(self, method: str, tasks: Sequence[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        run = getattr(self.side, method)
        for index, task in enumerate(tasks):
            try:
                result = run(*task)
            finally:
                self._collect()
            yield index, result

    def _collect(self) -> None:
        drain = getattr(self.side, "drain_notes", None)
        if drain is not None:
            self.notes.extend(drain())

    def model_loads(self) -> int:
        return 0
