"""ModelCache: one load per model spec per process, and a residency protocol that never hands
out a model that can be moved away.

Models are used only inside `with cache.use(spec) as model:`. Entry loads the model if needed,
puts it where its offload mode says (below) and pins it; exit unpins it. Eviction only ever
moves unpinned models, so a caller never computes with weights that were moved under it, and a
thread that needs room held by another thread's pinned model waits for it (a thread that
already holds pins never waits: it goes over budget instead, so nesting cannot deadlock).

Offload modes, part of the spec (`ModelSpec.offload`):
- `none`: the whole model sits on its device from its first use on.
- `cpu`: like `none`, but when placing a model would exceed the device budget, the least
  recently used unpinned models move to the CPU (model swapping).
- `model`: weights live on the CPU; the library hooks move the whole model to the device when
  it computes, and it goes back to the CPU when its last user leaves `use`.
- `sequential`: weights live on the CPU and stream to the device layer by layer.
On the CPU every mode is `none`: there is nowhere else to put the weights.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from nacosae import progress
from nacosae.models.devices import empty_device_cache
from nacosae.models.residency import (
    OFFLOAD_MODES,
    OffloadMode,
    Release,
    attach_offload,
    object_nbytes,
    place,
)
from nacosae.progress import human_bytes

Loader = Callable[["ModelSpec"], Any]

GIB = 1024**3
WAIT_SECONDS = 600.0  # how long a thread waits for another thread's pinned model


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a loaded model: two equal specs share one object."""

    kind: str
    id: str
    revision: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    offload: OffloadMode = "none"
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.offload not in OFFLOAD_MODES:
            raise ValueError(f"offload must be one of {', '.join(OFFLOAD_MODES)}: {self.offload!r}")

    @property
    def residency(self) -> OffloadMode:
        """The offload mode in effect: on the CPU there is nothing to offload to."""
        return "none" if self.device == "cpu" else self.offload

    def same_weights(self, other: ModelSpec) -> bool:
        """The same model, whatever the offload mode."""
        return replace(self, offload="none") == replace(other, offload="none")

    def label(self) -> str:
        return f"{self.kind}:{self.id}" + (f"@{self.revision[:12]}" if self.revision else "")

    def storage_key(self) -> ModelSpec:
        """The key of the loaded object: `none` and `cpu` share one plain object (they differ
        only in whether it may be swapped out), `model` and `sequential` each have their own,
        since the library hooks change the object."""
        hooked = self.residency in ("model", "sequential")
        return replace(self, offload=self.residency if hooked else "none")


@dataclass
class _Entry:
    obj: Any
    nbytes: int
    load_seconds: float
    placed: bool = False  # the whole model is on spec.device (modes none and cpu)
    swappable: bool = False  # its latest use allowed swapping it out (mode cpu)
    pins: Counter[int] = field(default_factory=Counter)  # thread id -> open `use` scopes
    release: Release | None = None  # model offload: back to the CPU when the last user leaves


@dataclass
class CacheStats:
    hits: int = 0
    loads: int = 0
    load_seconds: float = 0.0
    placements: int = 0
    evictions: int = 0
    move_seconds: float = 0.0
    models: dict[str, int] = field(default_factory=dict)  # label -> parameter bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "loads": self.loads,
            "load_seconds": round(self.load_seconds, 3),
            "placements": self.placements,
            "evictions": self.evictions,
            "move_seconds": round(self.move_seconds, 3),
            "models": dict(self.models),
        }


def default_budget(device: str) -> float:
    """Free accelerator memory less a margin for activations; unlimited for the CPU."""
    if device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info(torch.device(device))
        return max(0.0, free - max(GIB, 0.1 * total))
    if device == "mps":
        import torch

        return max(0.0, torch.mps.recommended_max_memory() - GIB)
    return float("inf")


class ModelCache:
    """The process-wide model cache. See the module docstring for the protocol."""

    def __init__(self, budget_bytes: float | None = None) -> None:
        self._budget_override = budget_bytes
        self._budgets: dict[str, float] = {}
        self._entries: OrderedDict[ModelSpec, _Entry] = OrderedDict()  # LRU first
        self._cond = threading.Condition(threading.RLock())
        self._load_locks: dict[ModelSpec, threading.Lock] = {}
        self._warned_over_budget: set[ModelSpec] = set()
        self._working: dict[ModelSpec, int] = {}  # bytes a model needs beside its placed weights
        self.stats = CacheStats()

    # ------------------------------------------------------------ configuration

    def set_budget(self, budget_bytes: float | None) -> None:
        """Bytes of whole models allowed on each accelerator (None: free memory less a margin)."""
        with self._cond:
            self._budget_override = budget_bytes

    def set_working(self, spec: ModelSpec, nbytes: int) -> None:
        """What `spec` needs on its device while it computes beyond its placed weights (its
        activations; under model or sequential offload also the weights it streams in): each
        `use` makes that room first, moving other unpinned models out (the memory plan's)."""
        with self._cond:
            self._working[spec.storage_key()] = int(nbytes)

    def budget(self, device: str) -> float:
        if device == "cpu":
            return float("inf")
        if self._budget_override is not None:
            return self._budget_override
        if device not in self._budgets:
            self._budgets[device] = default_budget(device)
        return self._budgets[device]

    # ------------------------------------------------------------ inspection

    def __contains__(self, spec: ModelSpec) -> bool:
        with self._cond:
            return spec.storage_key() in self._entries

    def placed(self) -> list[ModelSpec]:
        """Specs whose whole model is on its device now, least recently used first."""
        with self._cond:
            return [s for s, e in self._entries.items() if e.placed]

    def is_pinned(self, spec: ModelSpec) -> bool:
        """Whether some `use` scope holds `spec` now."""
        with self._cond:
            entry = self._entries.get(spec.storage_key())
            return bool(entry and entry.pins)

    def loaded(self) -> list[tuple[ModelSpec, Any]]:
        """Every loaded (spec, model) pair, for inspection; use models through `use` only."""
        with self._cond:
            return [(s, e.obj) for s, e in self._entries.items()]

    def nbytes(self, spec: ModelSpec) -> int:
        with self._cond:
            return self._entries[spec.storage_key()].nbytes

    # ------------------------------------------------------------ loading

    def load(self, spec: ModelSpec, loader: Loader | None = None) -> int:
        """Load `spec` (once) without placing it; returns its parameter bytes."""
        return self._load(spec, loader).nbytes

    def unplaced(self, spec: ModelSpec, loader: Loader | None = None) -> Any:
        """The loaded object wherever it lies, not moved: for what computes nothing with the
        weights (an LLM's tokenizer), so that reading it costs no transfer."""
        return self._load(spec, loader).obj

    def _load(self, spec: ModelSpec, loader: Loader | None) -> _Entry:
        spec = spec.storage_key()
        with self._cond:
            if spec in self._entries:
                self.stats.hits += 1
                return self._entries[spec]
            load_lock = self._load_locks.setdefault(spec, threading.Lock())
        with load_lock:
            with self._cond:
                if spec in self._entries:  # another thread finished loading it meanwhile
                    self.stats.hits += 1
                    return self._entries[spec]
            if loader is None:
                raise KeyError(f"{spec.label()} is not loaded and no loader was given")
            started = time.perf_counter()
            obj = loader(spec)
            seconds = time.perf_counter() - started
            release = None
            if spec.residency in ("model", "sequential"):
                release = attach_offload(obj, spec.residency, spec.device)
            with self._cond:
                self._forget_other_modes(spec)
                entry = _Entry(obj=obj, nbytes=object_nbytes(obj), load_seconds=seconds)
                entry.release = release
                self._entries[spec] = entry
                self.stats.loads += 1
                self.stats.load_seconds += seconds
                self.stats.models[spec.label()] = entry.nbytes
            progress.debug(
                f"loaded {spec.label()} in {seconds:.2f} s ({human_bytes(entry.nbytes)})"
            )
            return entry

    def _forget_other_modes(self, spec: ModelSpec) -> None:
        """Drop unpinned copies of the same model under other offload hooks: keeping both
        would hold the weights twice."""
        dropped_placed = False
        for other in [s for s in self._entries if s != spec and s.same_weights(spec)]:
            if not self._entries[other].pins:
                dropped_placed |= self._entries.pop(other).placed
        if dropped_placed:
            empty_device_cache(spec.device)  # pipelines hold reference cycles: collected first

    # ------------------------------------------------------------ the residency protocol

    def use(self, spec: ModelSpec, loader: Loader | None = None) -> AbstractContextManager[Any]:
        """`with cache.use(spec) as model:` the model, on its device and pinned until exit."""
        return self._use(spec, loader)

    @contextmanager
    def _use(self, spec: ModelSpec, loader: Loader | None) -> Iterator[Any]:
        entry = self._load(spec, loader)
        key = spec.storage_key()
        me = threading.get_ident()
        with self._cond:
            if self._entries.get(key) is not entry:  # forgotten meanwhile (clear, mode switch)
                self._entries[key] = entry
            self._entries.move_to_end(key)
            entry.swappable = spec.residency == "cpu"
            if spec.residency in ("none", "cpu") and not entry.placed:
                self._place(spec, key, entry, me)
            elif self._working.get(key) and spec.device != "cpu":
                self._make_room(key, 0)  # room for what it computes with
            entry.pins[me] += 1
        try:
            yield entry.obj
        finally:
            with self._cond:
                entry.pins[me] -= 1
                if entry.pins[me] <= 0:
                    del entry.pins[me]
                if not entry.pins and entry.release is not None:
                    entry.release()
                self._cond.notify_all()

    def _place(self, spec: ModelSpec, key: ModelSpec, entry: _Entry, me: int) -> None:
        """Move `spec` to its device, first making room by LRU if its mode is `cpu`."""
        deadline = time.monotonic() + WAIT_SECONDS
        while spec.residency == "cpu" and not self._make_room(key, entry.nbytes):
            held_by_others = any(
                e.placed and e.pins and set(e.pins) != {me}
                for s, e in self._entries.items()
                if s.device == spec.device
            )
            holding = any(me in e.pins for e in self._entries.values())
            if not held_by_others or holding or time.monotonic() > deadline:
                self._warn_over_budget(spec)
                break
            self._cond.wait(timeout=1.0)  # another thread's pinned model will be released
        started = time.perf_counter()
        entry.obj = place(entry.obj, spec.device)
        self.stats.move_seconds += time.perf_counter() - started
        self.stats.placements += 1
        entry.placed = True

    def _placed_bytes(self, device: str) -> int:
        return sum(e.nbytes for s, e in self._entries.items() if e.placed and s.device == device)

    def _make_room(self, spec: ModelSpec, needed: int) -> bool:
        """Move unpinned models of the device to the CPU, least recently used first, until
        `needed` more bytes and `spec`'s working memory fit; whether they fit now."""
        budget = self.budget(spec.device) - self._working.get(spec.storage_key(), 0)
        evicted = False
        for other, entry in list(self._entries.items()):
            if self._placed_bytes(spec.device) + needed <= budget:
                break
            if other == spec or not entry.placed or entry.pins or other.device != spec.device:
                continue
            if not entry.swappable:  # placed under mode none: it stays
                continue
            started = time.perf_counter()
            entry.obj = place(entry.obj, "cpu")
            self.stats.move_seconds += time.perf_counter() - started
            entry.placed = False
            self.stats.evictions += 1
            evicted = True
        if evicted:
            empty_device_cache(spec.device)
        return self._placed_bytes(spec.device) + needed <= budget

    def _warn_over_budget(self, spec: ModelSpec) -> None:
        if spec in self._warned_over_budget:
            return
        self._warned_over_budget.add(spec)
        progress.warn(
            f"{spec.label()} does not fit the {self.budget(spec.device) / GIB:.1f} GiB budget on "
            f"{spec.device} beside the models in use; placing it anyway (if memory runs out, "
            "use --offload model or sequential)"
        )

    # ------------------------------------------------------------ reporting

    def plan(self, specs: list[ModelSpec]) -> list[str]:
        """One phrase per loaded spec: its size and where it will live during the run."""
        swapped_total: dict[str, int] = {}
        for spec in specs:
            if spec.residency == "cpu":
                swapped_total[spec.device] = swapped_total.get(spec.device, 0) + self.nbytes(spec)
        phrases = []
        for spec in specs:
            size = human_bytes(self.nbytes(spec))
            where = {
                "none": f"on {spec.device}",
                "model": f"in CPU memory, moved whole to {spec.device} while it computes",
                "sequential": f"in CPU memory, streamed to {spec.device} layer by layer",
            }.get(spec.residency)
            if where is None:
                budget = self.budget(spec.device)
                if swapped_total[spec.device] <= budget:
                    where = f"on {spec.device} (all fit the {human_bytes(budget)} budget)"
                else:
                    where = (
                        f"on {spec.device} while in use, swapped to CPU memory when the "
                        f"{human_bytes(budget)} budget needs room"
                    )
            phrases.append(f"{spec.kind} {spec.id} {size} {where}")
        return phrases

    def clear(self) -> None:
        """Forget every unpinned model (they are freed when no one else holds them)."""
        with self._cond:
            for spec in [s for s, e in self._entries.items() if not e.pins]:
                del self._entries[spec]
                self._load_locks.pop(spec, None)


_shared: ModelCache | None = None
_shared_lock = threading.Lock()


def shared_cache() -> ModelCache:
    """The one cache of this process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ModelCache()
        return _shared


@dataclass(frozen=True)
class ModelHandle:
    """A model the code may use but not hold: `with handle.use() as model:` each time."""

    cache: ModelCache
    spec: ModelSpec
    loader: Loader | None = None

    def use(self) -> AbstractContextManager[Any]:
        return self.cache.use(self.spec, self.loader)

    def load(self) -> int:
        """Load now (parameter bytes returned), so that sizes are known before the work."""
        return self.cache.load(self.spec, self.loader)

    def unplaced(self) -> Any:
        """The loaded object, not moved to its device (see ModelCache.unplaced)."""
        return self.cache.unplaced(self.spec, self.loader)
