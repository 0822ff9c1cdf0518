"""What `nacosae controls` is asked to build (plain data: it travels to Ray workers)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nacosae.models.preprocessing import Triple
from nacosae.models.units import Readout, TokenPooling, make_readout

DType = Literal["float16", "float32"]
DEFAULT_SHARD_SIZE = 4096


@dataclass(frozen=True)
class ControlsRequest:
    """What `nacosae controls` was asked to build."""

    model: str
    layer: str
    images: Path
    controls_root: Path
    weights: str = "default"
    batch_size: int = 64
    workers: int | None = None
    device: str = "auto"
    dtype: DType = "float32"
    overwrite: bool = False
    shard_size: int = DEFAULT_SHARD_SIZE
    token_pooling: TokenPooling = "cls"
    sae: Path | None = None
    latent_pooling: str = "auto"  # with an SAE: what its latents read (models/units.py)
    image_size: int | None = None
    mean: Triple | None = None
    std: Triple | None = None
    ray: str | None = None  # a Ray cluster: local, auto or an address (None: this process)
    ray_workers: int | None = None

    def readout(self) -> Readout:
        return make_readout(self.token_pooling, self.sae, self.latent_pooling)
