"""What a "unit" is: a layer's output pooled to one value per channel, optionally re-expressed as
the latents of a sparse autoencoder (SAE) trained on that pooled output.

Pooling: 4-D maps (N, C, H, W) are averaged over H and W; token sequences (N, T, D) give their
class token (`cls`, index 0) or the mean over all tokens (`mean`); 2-D outputs are used as they
are. An SAE then maps the pooled vector x to ReLU(W_enc (x - b_dec) + b_enc), one unit per latent.

Accepted SAE files (safetensors), with the key names of the common SAE libraries:

| tensor | keys | shape |
| --- | --- | --- |
| encoder weight | `W_enc` (SAELens) | [d_in, d_sae] |
|  | `encoder.weight` (dictionary_learning, sparsify, OpenAI) | [d_sae, d_in] |
| encoder bias | `b_enc` / `encoder.bias` / `latent_bias` | [d_sae] |
| pre-encoder bias (optional) | `b_dec` / `pre_bias` / `bias` | [d_in] |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nacosae.errors import NacosaeError, UnknownLayer

if TYPE_CHECKING:
    import torch

TokenPooling = Literal["cls", "mean"]
ENCODER_WEIGHT = {"W_enc": False, "encoder.weight": True}  # key -> stored as [d_sae, d_in]
ENCODER_BIAS = ("b_enc", "encoder.bias", "latent_bias")
PRE_ENCODER_BIAS = ("b_dec", "pre_bias", "bias")


@dataclass(eq=False)
class SparseAutoencoder:
    """An SAE's encoder, read from a safetensors file (see the module docstring)."""

    path: Path
    sha256: str
    w_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor  # [d_sae]
    b_dec: torch.Tensor | None  # [d_in]
    _placed: dict[str, tuple] = field(default_factory=dict, repr=False)  # device -> tensors

    @property
    def d_in(self) -> int:
        return int(self.w_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.w_enc.shape[1])

    @classmethod
    def load(cls, path: Path) -> SparseAutoencoder:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from nacosae.store.atomic import sha256_file

        path = Path(path).expanduser()
        if not path.is_file():
            raise NacosaeError(f"--sae {path} does not exist: give a .safetensors SAE file")
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise NacosaeError(f"--sae {path} is not a readable safetensors file ({exc})") from exc
        weight_key = next((k for k in ENCODER_WEIGHT if k in tensors), None)
        bias_key = next((k for k in ENCODER_BIAS if k in tensors), None)
        if weight_key is None or bias_key is None:
            raise NacosaeError(
                f"--sae {path.name} has no {'encoder weight' if weight_key is None else 'bias'} "
                f"(its keys: {', '.join(sorted(tensors)[:8])}); expected W_enc or encoder.weight, "
                "and b_enc, encoder.bias or latent_bias"
            )
        w_enc = tensors[weight_key].float()
        w_enc = w_enc.T.contiguous() if ENCODER_WEIGHT[weight_key] else w_enc
        b_enc = tensors[bias_key].float()
        pre_key = next((k for k in PRE_ENCODER_BIAS if k in tensors), None)
        b_dec = tensors[pre_key].float() if pre_key else None
        if (
            w_enc.dim() != 2
            or b_enc.shape != (w_enc.shape[1],)
            or (b_dec is not None and b_dec.shape != (w_enc.shape[0],))
        ):
            shapes = {k: list(tensors[k].shape) for k in (weight_key, bias_key, pre_key) if k}
            raise NacosaeError(f"--sae {path.name} has inconsistent shapes: {shapes}")
        return cls(path, sha256_file(path), w_enc, b_enc, b_dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(W_enc (x - b_dec) + b_enc), computed in float32 on x's device."""
        import torch

        device = str(x.device)
        if device not in self._placed:
            self._placed[device] = tuple(
                t.to(x.device) if t is not None else None
                for t in (self.w_enc, self.b_enc, self.b_dec)
            )
        w_enc, b_enc, b_dec = self._placed[device]
        x = x.float()
        if b_dec is not None:
            x = x - b_dec
        return torch.relu(x @ w_enc + b_enc)


@dataclass(frozen=True)
class Readout:
    """How a layer's output becomes the explained units (see the module docstring)."""

    tokens: TokenPooling = "cls"
    sae: SparseAutoencoder | None = None

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        pooled = pool(output, self.tokens)
        if self.sae is None:
            return pooled
        if pooled.shape[1] != self.sae.d_in:
            raise NacosaeError(
                f"the SAE {self.sae.path.name} reads {self.sae.d_in} values, but the layer's "
                f"pooled output has {pooled.shape[1]}: is it for another layer (--layer)?"
            )
        return self.sae.encode(pooled)

    @property
    def variant(self) -> str:
        """'' for plain units, else a tag for the store folder (`tokens-mean`, `sae-<hash>`)."""
        parts = ["tokens-mean"] if self.tokens == "mean" else []
        if self.sae is not None:
            parts.append(f"sae-{self.sae.sha256[:12]}")
        return "+".join(parts)

    def describe(self) -> str:
        tokens = "class token (index 0)" if self.tokens == "cls" else "mean over all tokens"
        text = f"4-D: mean over H,W; 3-D tokens: {tokens}; 2-D: as is"
        if self.sae is not None:
            text += f"; then SAE {self.sae.path.name} (ReLU(W_enc (x - b_dec) + b_enc))"
        return text

    def identity(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "sae": None if self.sae is None else f"sha256={self.sae.sha256}",
        }


def pool(output: torch.Tensor, tokens: TokenPooling = "cls") -> torch.Tensor:
    """One value per unit: 4-D -> mean over H,W; 3-D tokens -> class token or mean; 2-D as is."""
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 3:
        return output[:, 0] if tokens == "cls" else output.mean(dim=1)
    if output.dim() == 2:
        return output
    raise UnknownLayer(f"cannot pool a layer output of shape {tuple(output.shape)}")


def make_readout(tokens: TokenPooling = "cls", sae: Path | str | None = None) -> Readout:
    return Readout(tokens, SparseAutoencoder.load(Path(sae)) if sae else None)
