"""Out-of-memory back-off: a batch that does not fit is halved and retried, down to one item;
at one item the model moves to a more frugal placement; only then does the run stop.

Every model side keeps one `BackOff` for its batched calls (text-to-image images, LLM rows,
explained-model images). A lowered size stays lowered for the rest of the run, and each step
is noted (what, from, to) for run.json. An LLM chat and an explained model's activations do not
depend on their batch on the CPU, so there a back-off changes nothing but the time; an image may
move by one intensity level in a pixel with its batch size (models/text2image.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from nacosae import progress
from nacosae.errors import NacosaeError
from nacosae.models import failpoints
from nacosae.models.devices import empty_device_cache

T = TypeVar("T")
ADVICE = {
    "t2i": "a smaller text-to-image model, a smaller image size, or --offload sequential",
    "llm": "--max-new-tokens lower, a smaller --language-model, or an --llm-url server",
    "vision": "--offload sequential, or a smaller explained model",
}
UNITS = {"t2i": "images", "llm": "rows", "vision": "images"}


def is_out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError"


@dataclass
class BackOff:
    """Batch sizes per kind of call, lowered on out-of-memory (see the module docstring).
    `escalate(kind)` moves that model to a more frugal placement and says which, or returns None
    when there is none left."""

    sizes: dict[str, int]
    escalate: Callable[[str], str | None] = lambda kind: None
    notes: list[dict[str, Any]] = field(default_factory=list)

    def run(
        self,
        kind: str,
        items: Sequence[Any],
        compute: Callable[[Any], list[T]],
        split: Callable[[Sequence[Any], int], list[Any]] | None = None,
    ) -> list[T]:
        """`compute(chunk)` over `items` in chunks of at most the current size (`split(items,
        size)` cuts them; default: consecutive slices), results in order."""
        cut = split or _slices
        results: list[T] = []
        pending = cut(items, self.sizes[kind])
        while pending:
            chunk = pending[0]
            try:
                failpoints.check(f"{kind}.oom")
                results.extend(compute(chunk))
            except Exception as error:
                if not is_out_of_memory(error):
                    raise
                empty_device_cache()
                self._lower(kind, error)
                pending = cut(_flatten([chunk, *pending[1:]]), self.sizes[kind])
                continue
            pending = pending[1:]
        return results

    def _lower(self, kind: str, error: BaseException) -> None:
        size = self.sizes[kind]
        if size > 1:
            self.sizes[kind] = max(1, size // 2)
            self._note({"kind": kind, "from": size, "to": self.sizes[kind]})
            return
        placement = self.escalate(kind)
        if placement is None:
            raise NacosaeError(
                f"out of memory in the {kind} step at a batch of one, with every offload "
                f"tried: try {ADVICE[kind]}, or a --gpu-memory budget below the free memory"
            ) from error
        self._note({"kind": kind, "from": 1, "to": 1, "offload": placement})

    def _note(self, note: dict[str, Any]) -> None:
        self.notes.append(note)
        change = f"{note['from']} -> {note['to']} {UNITS[note['kind']]}"
        if "offload" in note:
            change = f"now {note['offload']}"
        progress.warn(f"out of memory in the {note['kind']} step: {change}, retrying")

    def drain(self) -> list[dict[str, Any]]:
        """The notes since the last call (a worker sends them with each result)."""
        notes, self.notes = self.notes, []
        return notes


def _slices(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start : start + size] for start in range(0, len(items), max(1, size))]


def _flatten(chunks: list[Any]) -> list[Any]:
    """The items of `chunks` again, to cut anew at the lowered size (text-to-image calls are
    lists of requests whose images `split` regroups)."""
    return [item for chunk in chunks for item in chunk]
