"""What a "unit" is: a layer's output pooled to one value per channel, optionally re-expressed as
the latents of a sparse autoencoder (SAE, models/sae.py).

Pooling: 4-D maps (N, C, H, W) are averaged over H and W; token sequences (N, T, D) give their
class token (`cls`, index 0) or the mean over all tokens (`mean`); 2-D outputs are used as they
are. With an SAE, `latent_pooling` says what it reads:
- `none`: the pooled vector, one encoding per image (an SAE trained on pooled outputs);
- `max` / `mean` / `cls`: every token (every spatial position of a 4-D map) is encoded and the
  image's value of a latent is the max / mean over its tokens, or the class token's (an SAE
  trained on a residual stream's tokens: SAE dashboards show the max). Encoded in chunks of
  `TOKEN_ROWS` token rows, so a 16k-latent SAE on ViT-B's 197 tokens never holds a batch's
  tokens x latents at once.
`auto` (the CLI's default) is `max` for a SAELens/ViT-Prisma folder, `none` for a single file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from nacosae.errors import NacosaeError, UnknownLayer
from nacosae.models.sae import SparseAutoencoder

if TYPE_CHECKING:
    import torch

TokenPooling = Literal["cls", "mean"]
LATENT_POOLINGS = ("auto", "none", "max", "mean", "cls")
TOKEN_ROWS = 8192  # token rows encoded at once: 8192 x 16k latents x 4 bytes = 512 MiB


@dataclass(frozen=True)
class Readout:
    """How a layer's output becomes the explained units (see the module docstring)."""

    tokens: TokenPooling = "cls"
    sae: SparseAutoencoder | None = None
    latents: str = "none"  # with an SAE: none (the pooled vector), max, mean or cls over tokens

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        if self.sae is not None and self.latents != "none":
            return self._token_latents(output)
        pooled = pool(output, self.tokens)
        if self.sae is None:
            return pooled
        if pooled.shape[1] != self.sae.d_in:
            raise NacosaeError(
                f"the SAE {self.sae.path.name} reads {self.sae.d_in} values, but the layer's "
                f"pooled output has {pooled.shape[1]}: is it for another layer (--layer)?"
            )
        return self.sae.encode(pooled)

    def _token_latents(self, output: torch.Tensor) -> torch.Tensor:
        """Each token encoded, then pooled per latent over the image's tokens, in chunks."""
        import torch

        sae = self.sae
        assert sae is not None
        if output.dim() == 4:
            if self.latents == "cls":
                raise NacosaeError(
                    "--latent-pooling cls needs a token sequence (a class token); this layer "
                    "outputs feature maps: use max or mean"
                )
            output = output.flatten(2).transpose(1, 2)  # [N, H*W, C]: a token per position
        if output.dim() != 3:
            raise UnknownLayer(
                f"--latent-pooling {self.latents} encodes tokens, but the layer's output has "
                f"shape {tuple(output.shape)}: use --latent-pooling none"
            )
        if output.shape[2] != sae.d_in:
            raise NacosaeError(
                f"the SAE {sae.path.name} reads {sae.d_in} values per token, but the layer's "
                f"tokens have {output.shape[2]}: is it for another layer (--layer)?"
            )
        if self.latents == "cls":
            return sae.encode(output[:, 0])
        n, t, d = output.shape
        per_chunk = max(1, TOKEN_ROWS // t)
        parts = []
        for start in range(0, n, per_chunk):
            chunk = output[start : start + per_chunk]
            latents = sae.encode(chunk.reshape(-1, d)).reshape(len(chunk), t, sae.d_sae)
            parts.append(latents.amax(dim=1) if self.latents == "max" else latents.mean(dim=1))
        return torch.cat(parts)

    @property
    def variant(self) -> str:
        """'' for plain units, else a tag for the store folder (`tokens-mean`, `sae-<hash>`)."""
        parts = ["tokens-mean"] if self.tokens == "mean" else []
        if self.sae is not None:
            parts.append(f"sae-{self.sae.sha256[:12]}")
            if self.latents != "none":
                parts.append(f"latents-{self.latents}")
        return "+".join(parts)

    def describe(self) -> str:
        tokens = "class token (index 0)" if self.tokens == "cls" else "mean over all tokens"
        text = f"4-D: mean over H,W; 3-D tokens: {tokens}; 2-D: as is"
        if self.sae is not None and self.latents != "none":
            over = "the class token's" if self.latents == "cls" else f"{self.latents} over tokens"
            return f"every token (or spatial position) through {self.sae.describe()}, then {over}"
        if self.sae is not None:
            text += f"; then {self.sae.describe()}"
        return text

    def identity(self) -> dict[str, Any]:
        found = {
            "tokens": self.tokens,
            "sae": None if self.sae is None else f"sha256={self.sae.sha256}",
        }
        if self.sae is not None and self.latents != "none":  # pooled SAEs keep their identity
            found["latents"] = self.latents
        return found


def pool(output: torch.Tensor, tokens: TokenPooling = "cls") -> torch.Tensor:
    """One value per unit: 4-D -> mean over H,W; 3-D tokens -> class token or mean; 2-D as is."""
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() == 3:
        return output[:, 0] if tokens == "cls" else output.mean(dim=1)
    if output.dim() == 2:
        return output
    raise UnknownLayer(f"cannot pool a layer output of shape {tuple(output.shape)}")


def make_readout(
    tokens: TokenPooling = "cls", sae: Path | str | None = None, latents: str = "auto"
) -> Readout:
    """The readout of a layer's units; `latents` `auto` follows the SAE (module docstring)."""
    if latents not in LATENT_POOLINGS:
        raise NacosaeError(
            f"unknown --latent-pooling {latents!r}: use {', '.join(LATENT_POOLINGS)}"
        )
    if not sae:
        if latents not in ("auto", "none"):
            raise NacosaeError(f"--latent-pooling {latents} reads SAE latents: give --sae too")
        return Readout(tokens)
    loaded = SparseAutoencoder.load(Path(sae))
    if latents == "auto":
        latents = "max" if loaded.trained_on_tokens else "none"
    return Readout(tokens, loaded, latents)
