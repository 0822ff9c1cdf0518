"""ModelCache: one load per model spec per process, kept on the accelerator within a byte budget.

Every command shares one cache. `get(spec)` loads through the loader registered for the spec's
kind on first use and returns the same object afterwards. Placed models are tracked by parameter
bytes; when placing one would exceed the budget, the least-recently-used placed models are moved
to the CPU (`offload="cpu"`, the original "model swapping"). `offload="sequential"` hands the
model to accelerate/diffusers offload hooks instead of placing it. Thread-safe: concurrent `get`
of one spec loads it once; different specs load in parallel.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

OffloadMode = Literal["none", "cpu", "sequential"]
Loader = Callable[["ModelSpec"], Any]
Mover = Callable[[Any, str], Any]

GIB = 1024**3


@dataclass(frozen=True)
class ModelSpec:
    """What identifies a loaded model: two equal specs share one object."""

    kind: str
    id: str
    revision: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    options: tuple[tuple[str, str], ...] = ()

    def label(self) -> str:
        return f"{self.kind}:{self.id}" + (f"@{self.revision}" if self.revision else "")


@dataclass
class _Entry:
    obj: Any
    nbytes: int
    placed: bool  # on spec.device (counts against the budget)
    load_seconds: float


@dataclass
class CacheStats:
    hits: int = 0
    loads: int = 0
    load_seconds: float = 0.0
    evictions: int = 0
    models: dict[str, int] = field(default_factory=dict)  # label -> parameter bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "loads": self.loads,
            "load_seconds": round(self.load_seconds, 3),
            "evictions": self.evictions,
            "models": dict(self.models),
        }


def object_nbytes(obj: Any) -> int:
    """Parameter and buffer bytes of a module, or of every module inside a pipeline-like object."""
    import torch

    modules: list[torch.nn.Module] = []
    if isinstance(obj, torch.nn.Module):
        modules.append(obj)
    elif hasattr(obj, "components") and isinstance(obj.components, dict):
        modules.extend(m for m in obj.components.values() if isinstance(m, torch.nn.Module))
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def move_to(obj: Any, device: str) -> Any:
    """Default mover: `.to(device)` works for torch modules and diffusers pipelines alike."""
    moved = obj.to(device)
    return obj if moved is None else moved


def apply_sequential_offload(obj: Any, device: str) -> Any:
    """Let weights live on the CPU and stream to `device` layer by layer during forward."""
    if hasattr(obj, "enable_sequential_cpu_offload"):
        obj.enable_sequential_cpu_offload(device=device)
        return obj
    from accelerate import cpu_offload

    return cpu_offload(obj, execution_device=device)


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
    """The process-wide model cache. See the module docstring for the policy."""

    def __init__(
        self,
        budget_bytes: float | None = None,
        offload: OffloadMode = "cpu",
        loaders: dict[str, Loader] | None = None,
        mover: Mover = move_to,
        sizer: Callable[[Any], int] = object_nbytes,
    ) -> None:
        if offload not in ("none", "cpu", "sequential"):
            raise ValueError(f"offload must be none, cpu or sequential, not {offload!r}")
        self.offload: OffloadMode = offload
        self._budget_override = budget_bytes
        self._budgets: dict[str, float] = {}
        self._loaders: dict[str, Loader] = dict(loaders or {})
        self._mover = mover
        self._sizer = sizer
        self._entries: OrderedDict[ModelSpec, _Entry] = OrderedDict()  # LRU first
        self._lock = threading.RLock()
        self._load_locks: dict[ModelSpec, threading.Lock] = {}
        self.stats = CacheStats()

    def register(self, kind: str, loader: Loader) -> None:
        """Set the loader used for specs of `kind`."""
        with self._lock:
            self._loaders[kind] = loader

    def __contains__(self, spec: ModelSpec) -> bool:
        with self._lock:
            return spec in self._entries

    def placed(self) -> list[ModelSpec]:
        """Specs currently on their device, least recently used first."""
        with self._lock:
            return [s for s, e in self._entries.items() if e.placed]

    def budget(self, device: str) -> float:
        if self._budget_override is not None:
            return self._budget_override
        if device not in self._budgets:
            self._budgets[device] = default_budget(device)
        return self._budgets[device]

    def get(self, spec: ModelSpec, loader: Loader | None = None) -> Any:
        """The model for `spec`, loading it once and placing it on its device within budget."""
        with self._lock:
            if spec in self._entries:
                self.stats.hits += 1
                return self._touch(spec)
            load_lock = self._load_locks.setdefault(spec, threading.Lock())
        with load_lock:
            with self._lock:
                if spec in self._entries:  # another thread finished loading it meanwhile
                    self.stats.hits += 1
                    return self._touch(spec)
                load = loader or self._loaders.get(spec.kind)
            if load is None:
                raise KeyError(f"no loader registered for model kind {spec.kind!r}")
            started = time.perf_counter()
            obj = load(spec)
            seconds = time.perf_counter() - started
            with self._lock:
                nbytes = self._sizer(obj)
                entry = _Entry(obj=obj, nbytes=nbytes, placed=False, load_seconds=seconds)
                self._entries[spec] = entry
                self.stats.loads += 1
                self.stats.load_seconds += seconds
                self.stats.models[spec.label()] = nbytes
                if self.offload == "sequential" and spec.device != "cpu":
                    entry.obj = apply_sequential_offload(obj, spec.device)
                    return entry.obj
                return self._touch(spec)

    def _touch(self, spec: ModelSpec) -> Any:
        """Mark `spec` most recently used and make sure it sits on its device."""
        entry = self._entries[spec]
        self._entries.move_to_end(spec)
        if not entry.placed and not (self.offload == "sequential" and spec.device != "cpu"):
            if self.offload == "cpu":
                self._make_room(spec.device, entry.nbytes, keep=spec)
            entry.obj = self._mover(entry.obj, spec.device)
            entry.placed = True
        return entry.obj

    def _placed_bytes(self, device: str) -> int:
        return sum(e.nbytes for s, e in self._entries.items() if e.placed and s.device == device)

    def _make_room(self, device: str, needed: int, keep: ModelSpec) -> None:
        if device == "cpu":
            return
        budget = self.budget(device)
        for spec, entry in list(self._entries.items()):
            if self._placed_bytes(device) + needed <= budget:
                break
            if spec == keep or not entry.placed or spec.device != device:
                continue
            entry.obj = self._mover(entry.obj, "cpu")
            entry.placed = False
            self.stats.evictions += 1
        if device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def clear(self) -> None:
        """Forget every model (they are freed when no one else holds them)."""
        with self._lock:
            self._entries.clear()
            self._load_locks.clear()


_shared: ModelCache | None = None
_shared_lock = threading.Lock()


def shared_cache() -> ModelCache:
    """The one cache of this process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ModelCache()
        return _shared
