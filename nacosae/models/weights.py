"""State-dict files: reading them without unpickling code, and loading them into a model.

One home for what every model source (torchvision names, `timm:`, `hf:`) does with a weights
file: `.safetensors` or a `.pt/.pth/.pth.tar` state dict, keys matched exactly (or, for the same
network exported by another library, by position), and a weights id naming what was loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from nacosae.errors import WeightsUnavailable
from nacosae.store.atomic import sha256_file

if TYPE_CHECKING:
    import torch
    from torch import nn

RANDOM_INIT_SEED = 0  # `--weights none`: every source seeds torch with this before building
RANDOM_INIT_ID = f"random-init:seed={RANDOM_INIT_SEED}"


def seeded_random_init() -> str:
    """Seed torch for a reproducible random init; returns the weights id that names it."""
    import torch

    torch.manual_seed(RANDOM_INIT_SEED)
    return RANDOM_INIT_ID


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str = "module.") -> dict:
    return {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors` or a `.pt/.pth/.pth.tar` file, never unpickling code."""
    import torch
    from safetensors.torch import load_file

    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the file is unusable
        raise WeightsUnavailable(f"cannot read weights {path}: {exc}".splitlines()[0]) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailable(f"{path} does not hold a state dict of tensors")
    return _strip_prefix(state)


def load_state_dict_file(model: nn.Module, path_text: str, name: str) -> str:
    """Load a state-dict file into `model`; returns its weights id.

    Key names must match, except that a file whose names all differ but whose tensors match the
    model's one for one in order and shape (the same network exported by another library, e.g.
    the original EfficientNet-Lite code for timm's `tf_efficientnet_lite0`) is loaded by
    position, with a warning; the id then says `by-position`.
    """
    from nacosae import progress

    path = Path(path_text).expanduser()
    state = read_state_dict(path)
    weights_id = f"file:{path.name}:sha256={sha256_file(path)}"
    if state_dict_mismatch(model, state) and (renamed := by_position(model, state)) is not None:
        progress.warn(
            f"the key names in {path.name} differ from {name}'s, but all {len(state)} tensors "
            "match in order and shape: loaded by position"
        )
        state, weights_id = renamed, weights_id + ":by-position"
    load_exactly(model, state, path.name, name)
    return weights_id


def by_position(model: nn.Module, state: dict[str, torch.Tensor]) -> dict | None:
    """`state` renamed to the model's keys by position, when every name differs and every
    shape matches in order; None otherwise."""
    expected = model.state_dict()
    if len(expected) != len(state) or set(expected) & set(state):
        return None
    pairs = list(zip(expected.items(), state.values(), strict=True))
    if any(tuple(mine.shape) != tuple(theirs.shape) for (_, mine), theirs in pairs):
        return None
    return {key: theirs for (key, _), theirs in pairs}


def load_exactly(model: nn.Module, state: dict[str, torch.Tensor], file: str, name: str) -> None:
    """`model.load_state_dict(state, strict=True)`, or one error saying which keys differ."""
    mismatch = state_dict_mismatch(model, state)
    if mismatch:
        raise WeightsUnavailable(
            f"the weights in {file} do not fit {name}: {mismatch}; are they for another "
            "architecture (--model)?"
        )
    model.load_state_dict(state, strict=True)


def state_dict_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """What keeps `state` from loading into `model`: counts and a few examples each of the
    missing, unexpected and mis-shaped keys; None when it fits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} (file {list(state[k].shape)}, model {list(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if keys:
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            parts.append(f"{len(keys)} {what} (e.g. {shown})")
    return "; ".join(parts) or None
