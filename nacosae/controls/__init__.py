"""Control activation stores: building one (`nacosae controls`, here or on Ray workers) and
opening a complete one for reading."""

from nacosae.controls.build import ControlsResult, build_controls, open_controls
from nacosae.controls.model_side import default_workers
from nacosae.controls.request import ControlsRequest

__all__ = [
    "ControlsRequest",
    "ControlsResult",
    "build_controls",
    "default_workers",
    "open_controls",
]
