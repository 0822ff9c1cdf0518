"""Where models compute, and in which precision: the one device and dtype policy.

Every command resolves `--device` here and asks `compute_dtype` which precision each kind of
model runs in, so that explain, evaluate, controls and the Ray workers agree (the concept-cache
keys record the dtype, so two policies would mean two caches).
"""

from __future__ import annotations

from typing import Literal

from nacosae.errors import NacosaeError

ModelKind = Literal["vision", "t2i", "llm", "embedder"]


def resolve_device(device: str) -> str:
    """`auto` -> cuda, then mps, then cpu; an unavailable explicit choice is an error."""
    import torch

    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if device == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if device.startswith("cuda") and not cuda:
        raise NacosaeError("CUDA is not available on this machine: use --device cpu or auto")
    if device == "mps" and not mps:
        raise NacosaeError("Apple MPS is not available on this machine: use --device cpu or auto")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise NacosaeError(f"unknown device {device!r}: use auto, cuda, cuda:N, mps or cpu")
    return device


def compute_dtype(kind: ModelKind, device: str, stored: str = "float32") -> str:
    """The precision a model of `kind` computes in on `device`.

    On the CPU everything runs in float32 (half precision is slow there and not always
    implemented). On accelerators the text-to-image pipeline runs in float16, the LLM in bfloat16
    on CUDA (its range suits long generations) and float16 on MPS, and the explained model in
    float16 only when its control store was asked for float16 values (`--dtype`), so that the
    activations of generated images are computed as the controls were.
    """
    if device == "cpu":
        return "float32"
    if kind == "vision":
        return "float16" if stored == "float16" else "float32"
    if kind == "llm":
        return "bfloat16" if device.startswith("cuda") else "float16"
    if kind == "embedder":
        return "float32"
    return "float16"


def empty_device_cache(device: str | None = None) -> None:
    """Return freed accelerator memory to the driver (after models were dropped or moved)."""
    import gc

    import torch

    gc.collect()  # pipelines hold reference cycles: free their tensors first
    if (device is None or device.startswith("cuda")) and torch.cuda.is_available():
        torch.cuda.empty_cache()
