"""Where a loaded model's weights live: sizing, whole-model moves and the offload hooks.

A loaded model is a torch module, a diffusers pipeline, or a bundle such as the LLM's
(model, tokenizer) pair that exposes its modules as `components`. These functions treat the
three alike. Offloading is left to the libraries that do it well: a diffusers pipeline gets its
own `enable_model_cpu_offload` / `enable_sequential_cpu_offload`; any other module gets
accelerate's `cpu_offload_with_hook` (model level) or `cpu_offload` (layer by layer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

OffloadMode = Literal["none", "cpu", "model", "sequential"]
OFFLOAD_MODES: tuple[OffloadMode, ...] = ("none", "cpu", "model", "sequential")
Release = Callable[[], None]


def modules_of(obj: Any) -> list[nn.Module]:
    """The torch modules that hold a loaded model's weights."""
    from torch import nn

    if isinstance(obj, nn.Module):
        return [obj]
    components = getattr(obj, "components", None)
    if isinstance(components, dict):
        return [m for m in components.values() if isinstance(m, nn.Module)]
    return []


def object_nbytes(obj: Any) -> int:
    """Parameter and buffer bytes of a loaded model (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for module in modules_of(obj):
        for tensor in (*module.parameters(), *module.buffers()):
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def is_pipeline(obj: Any) -> bool:
    """A diffusers pipeline (it brings its own offload methods)."""
    return hasattr(obj, "enable_model_cpu_offload") and hasattr(obj, "components")


def place(obj: Any, device: str) -> Any:
    """Move the whole model to `device`; returns the object to keep using."""
    if is_pipeline(obj):
        obj.to(device)
        return obj
    if hasattr(obj, "to") and not isinstance(getattr(obj, "components", None), dict):
        moved = obj.to(device)
        return obj if moved is None else moved
    for module in modules_of(obj):
        module.to(device)
    return obj


def attach_offload(obj: Any, mode: OffloadMode, device: str) -> Release | None:
    """Hand the model to the library offload hooks for `mode` ("model" or "sequential").

    Weights stay in CPU memory and reach `device` only while they compute. Returns what to call
    once nobody uses the model any more (model-level offload moves it back to the CPU then), or
    None when the hooks need no help.
    """
    if mode not in ("model", "sequential"):
        raise ValueError(f"no offload hooks for mode {mode!r}")
    if is_pipeline(obj):
        if mode == "sequential":
            obj.enable_sequential_cpu_offload(device=device)
            return None
        obj.enable_model_cpu_offload(device=device)
        return obj.maybe_free_model_hooks  # idempotent; needed when a call stopped midway
    from accelerate import cpu_offload, cpu_offload_with_hook

    modules = modules_of(obj)
    if not modules:
        raise TypeError(f"{type(obj).__name__} holds no torch module to offload")
    if mode == "sequential":
        for module in modules:
            cpu_offload(module, execution_device=device)
        return None
    hooks = [cpu_offload_with_hook(module, execution_device=device)[1] for module in modules]

    def release() -> None:
        for hook in hooks:
            hook.offload()

    return release
