"""The control activation store of a model's layer: building it and opening it."""

from nacosae.controls.build import (
    ControlsRequest,
    ControlsResult,
    build_controls,
    open_controls,
)
from nacosae.controls.model_side import (
    compute_dtype,
    default_workers,
    load_vision,
    model_preprocessing,
    resolve_device,
    vision_spec,
)

__all__ = [
    "ControlsRequest",
    "ControlsResult",
    "build_controls",
    "compute_dtype",
    "default_workers",
    "load_vision",
    "model_preprocessing",
    "open_controls",
    "resolve_device",
    "vision_spec",
]
