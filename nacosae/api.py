"""Python API for notebooks: `nacosae.explain(...)`, also with an `nn.Module` already in hand."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from nacosae.models.cache import ModelCache


def module_weights_id(module: nn.Module) -> str:
    """A fingerprint of a module's parameters and buffers (what its control store is keyed by)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
        digest.update(name.encode())
        digest.update(raw.numpy().tobytes())
    return f"module:sha256={digest.hexdigest()[:16]}"


def explain(
    neurons: int | list[int],
    *,
    model: str | nn.Module = "resnet18",
    layer: str = "avgpool",
    model_name: str | None = None,
    images: str | Path | None = None,
    save_dir: str | Path | None = None,
    preset: str | list[str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Explain `neurons` of `layer`; returns the run summary (also written under save_dir).

    `model` is a registered name or an `nn.Module` (then `model_name` names its control store).
    If no control store exists yet and `images` (an ImageFolder tree) is given, it is built
    first. `preset` ("line", "smoke" or both) applies a preset; keyword arguments you give win
    over it. Other keyword arguments are `ExplainOptions` fields (n_iters, num_img, t2i_model,
    language_model, llm_url, metric, seed, device, ...).
    """
    from nacosae.config import settings
    from nacosae.models.cache import shared_cache
    from nacosae.models.devices import resolve_device
    from nacosae.presets import apply_presets, prepare
    from nacosae.search.options import ExplainOptions
    from nacosae.search.runner import run_explain

    config, cache = settings(), shared_cache()
    device = resolve_device(options.get("device", "auto"))
    weights = options.pop("weights", "default")
    if isinstance(model, str):
        name = model
    else:
        name, weights = _register_module(model, model_name, device, cache), "module"
    controls_root = Path(options.pop("controls_root", config.controls_dir))
    if images is not None:
        _controls_once(name, layer, weights, Path(images), controls_root, device, cache)
    explicit = set(options)
    if not isinstance(model, str) or model != "resnet18":
        explicit |= {"model", "weights"}
    if layer != "avgpool":
        explicit.add("layer")
    resolved = ExplainOptions(
        neurons=[str(n) for n in ([neurons] if isinstance(neurons, int) else neurons)],
        save_dir=Path(save_dir) if save_dir else config.save_dir,
        controls_root=controls_root,
        model=name,
        layer=layer,
        weights=weights,
        **{**options, "device": device},
    )
    presets = [preset] if isinstance(preset, str) else list(preset or [])
    resolved = prepare(apply_presets(resolved, presets, explicit), cache)
    run = run_explain(resolved, cache)
    return {"run_dir": str(run.run_dir), **run.summary}


def _register_module(module: nn.Module, name: str | None, device: str, cache: ModelCache) -> str:
    """Put a module in hand into the model cache under `name`, for every dtype a run may ask
    for, so that the search uses it as a loaded model (weights id: its fingerprint)."""
    from nacosae.errors import NacosaeError
    from nacosae.models.devices import compute_dtype
    from nacosae.models.vision import vision_spec

    if not name:
        raise NacosaeError("pass model_name=... to name the control store of your module")
    module = module.eval().to(device)
    module.nacosae_weights_id = module_weights_id(module)
    for stored in ("float32", "float16"):
        spec = vision_spec(name, "module", device, compute_dtype("vision", device, stored))
        cache.load(spec, lambda _spec, m=module: m)
    return name


def _controls_once(
    name: str,
    layer: str,
    weights: str,
    images: Path,
    controls_root: Path,
    device: str,
    cache: ModelCache,
) -> None:
    """Build the control store of `name` / `layer` from `images` unless it exists."""
    from nacosae.controls import ControlsRequest, build_controls
    from nacosae.store.activations import store_dir

    if (store_dir(controls_root, name, layer) / "index.json").exists():
        return
    request = ControlsRequest(
        model=name,
        layer=layer,
        images=images,
        controls_root=controls_root,
        weights=weights,
        device=device,
        workers=0,
    )
    build_controls(request, cache)
