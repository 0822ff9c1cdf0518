"""Sparse autoencoders (SAEs) whose latents are the explained units: their files, their encoder.

Two ways to give one (`--sae`):
- a safetensors file with the key names of the common SAE libraries (below), trained on the
  layer's pooled output unless told otherwise: its latents read the pooled vector;
- a SAELens or ViT-Prisma folder: `cfg.json` (`d_in`, `d_sae`, the hook it was trained on,
  `architecture` / `activation_fn_str` with `k` for TopK, `apply_b_dec_to_input`,
  `normalize_activations`) and `sae_weights.safetensors` (`W_enc`, `b_enc`, `b_dec`, and
  `threshold` for JumpReLU). Such SAEs are trained on every token of a residual stream, so by
  default each token is encoded and the image's value is the max over its tokens
  (`--latent-pooling`, models/units.py).

Encoder: x -> optional normalisation (constant_norm_rescale: x * sqrt(d_in) / |x|; layer_norm:
(x - mean) / (std + 1e-5)) -> x - b_dec (when applied to the input) -> pre = x W_enc + b_enc ->
ReLU(pre); JumpReLU: ReLU(pre) where pre > threshold, else 0; TopK: the k largest of ReLU(pre), the
rest 0.

| tensor | keys | shape |
| --- | --- | --- |
| encoder weight | `W_enc` (SAELens) | [d_in, d_sae] |
|  | `encoder.weight` (dictionary_learning, sparsify, OpenAI) | [d_sae, d_in] |
| encoder bias | `b_enc` / `encoder.bias` / `latent_bias` | [d_sae] |
| pre-encoder bias (optional) | `b_dec` / `pre_bias` / `bias` | [d_in] |
| JumpReLU threshold | `threshold` (or `log_threshold`) | [d_sae] |
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae.errors import NacosaeError

if TYPE_CHECKING:
    import torch

ENCODER_WEIGHT = {"W_enc": False, "encoder.weight": True}  # key -> stored as [d_sae, d_in]
ENCODER_BIAS = ("b_enc", "encoder.bias", "latent_bias")
PRE_ENCODER_BIAS = ("b_dec", "pre_bias", "bias")
CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
ACTIVATIONS = ("relu", "jumprelu", "topk")
NORMALISATIONS = ("none", "constant_norm_rescale", "layer_norm")
RESID_POST = re.compile(r"blocks\.(\d+)\.hook_resid_post")


@dataclass(eq=False)
class SparseAutoencoder:
    """An SAE's encoder (see the module docstring)."""

    path: Path
    sha256: str
    w_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor  # [d_sae]
    b_dec: torch.Tensor | None  # [d_in]
    activation: str = "relu"
    threshold: torch.Tensor | None = None  # JumpReLU, [d_sae]
    k: int | None = None  # TopK
    apply_b_dec_to_input: bool = True
    normalise: str = "none"
    hook_name: str | None = None  # the hook it was trained on (folders only)
    trained_on_tokens: bool = False
    _placed: dict[str, tuple] = field(default_factory=dict, repr=False)  # device -> tensors

    @property
    def d_in(self) -> int:
        return int(self.w_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.w_enc.shape[1])

    @classmethod
    def load(cls, path: Path) -> SparseAutoencoder:
        path = Path(path).expanduser()
        if path.is_dir():
            return _load_folder(path)
        if not path.is_file():
            raise NacosaeError(
                f"--sae {path} does not exist: give a .safetensors SAE file or a SAELens folder"
            )
        from nacosae.store.atomic import sha256_file

        tensors = _read_tensors(path)
        w_enc, b_enc, b_dec = _encoder(tensors, path.name)
        return cls(path, sha256_file(path), w_enc, b_enc, b_dec)

    def describe(self) -> str:
        steps = {"constant_norm_rescale": "x * sqrt(d_in)/|x|", "layer_norm": "layer norm"}
        shift = "x - b_dec" if self.b_dec is not None and self.apply_b_dec_to_input else "x"
        act = {"relu": "ReLU", "jumprelu": "JumpReLU", "topk": f"TopK(k={self.k})"}[self.activation]
        pre = f"{steps[self.normalise]}; " if self.normalise in steps else ""
        return f"SAE {self.path.name} ({pre}{act}(W_enc ({shift}) + b_enc))"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The latents of rows `x` [n, d_in], computed in float32 on x's device."""
        import torch

        device = str(x.device)
        if device not in self._placed:
            self._placed[device] = tuple(
                t.to(x.device) if t is not None else None
                for t in (self.w_enc, self.b_enc, self.b_dec, self.threshold)
            )
        w_enc, b_enc, b_dec, threshold = self._placed[device]
        x = x.float()
        if self.normalise == "constant_norm_rescale":
            x = x * (self.d_in**0.5) / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        elif self.normalise == "layer_norm":
            x = (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True) + 1e-5)
        if b_dec is not None and self.apply_b_dec_to_input:
            x = x - b_dec
        pre = x @ w_enc + b_enc
        latents = torch.relu(pre)
        if self.activation == "jumprelu":
            return latents * (pre > threshold)
        if self.activation == "topk":
            top = latents.topk(min(int(self.k or 1), latents.shape[-1]), dim=-1)
            latents = torch.zeros_like(latents).scatter(-1, top.indices, top.values)
        return latents


def hook_layer(hook_name: str | None, model: str) -> str | None:
    """The module path of `model` whose output is the hook's (`blocks.L.hook_resid_post` -> the
    output of block L), for torchvision, timm and Hugging Face ViTs; None when unknown."""
    found = RESID_POST.fullmatch(hook_name or "")
    if found is None:
        return None
    block = int(found.group(1))
    if model.startswith("timm:"):
        return f"blocks.{block}"
    if model.startswith("hf:"):
        return f"{_hf_encoder_prefix(model.removeprefix('hf:'))}.{block}"
    if model.startswith("vit_") or model == "tiny_vit":
        return f"encoder.layers.encoder_layer_{block}"
    return None


def folder_hook(path: Path | str | None) -> str | None:
    """The hook name in an SAE folder's cfg.json (None for a file or a config without one)."""
    if path is None or not Path(path).expanduser().is_dir():
        return None
    config = _read_config(Path(path).expanduser())
    return config.get("hook_name") or config.get("hook_point")


def _hf_encoder_prefix(repo: str) -> str:
    """CLIP and SigLIP vision towers number their blocks under vision_model.encoder.layers."""
    config = Path(repo).expanduser() / "config.json"
    model_type = ""
    if config.is_file():
        try:
            model_type = str(json.loads(config.read_text(encoding="utf-8")).get("model_type"))
        except (OSError, ValueError):
            model_type = ""
    elif any(word in repo.lower() for word in ("clip", "siglip")):
        model_type = "clip"
    if model_type.startswith(("clip", "siglip")):
        return "vision_model.encoder.layers"
    return "encoder.layer"


def _load_folder(folder: Path) -> SparseAutoencoder:
    import torch

    config = _read_config(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        found = sorted(folder.glob("*.safetensors"))
        if len(found) != 1:
            raise NacosaeError(
                f"--sae {folder} has no {WEIGHTS} (and not exactly one .safetensors file): give "
                "a SAELens or ViT-Prisma folder"
            )
        weights = found[0]
    tensors = _read_tensors(weights)
    w_enc, b_enc, b_dec = _encoder(tensors, folder.name)
    d_in = config.get("d_in")
    d_sae = config.get("d_sae") or (
        int(d_in * config["expansion_factor"]) if d_in and config.get("expansion_factor") else None
    )
    if (d_in, d_sae) != (w_enc.shape[0], w_enc.shape[1]) and d_in is not None:
        raise NacosaeError(
            f"--sae {folder}: cfg.json says d_in {d_in}, d_sae {d_sae}, but W_enc is "
            f"{list(w_enc.shape)}"
        )
    activation = _activation(config, folder)
    threshold = None
    if activation == "jumprelu":
        if "threshold" in tensors:
            threshold = tensors["threshold"].float()
        elif "log_threshold" in tensors:
            threshold = torch.exp(tensors["log_threshold"].float())
        else:
            raise NacosaeError(f"--sae {folder} is a JumpReLU SAE without a threshold tensor")
    k = None
    if activation == "topk":
        k = config.get("k") or (config.get("activation_fn_kwargs") or {}).get("k")
        if not isinstance(k, int) or k < 1:
            raise NacosaeError(f"--sae {folder} is a TopK SAE without k in cfg.json")
    normalise = str(config.get("normalize_activations") or "none")
    if normalise not in NORMALISATIONS:
        raise NacosaeError(
            f"--sae {folder} normalises its input with {normalise!r}; nacosae reads "
            f"{', '.join(NORMALISATIONS)}"
        )
    digest = hashlib.sha256(_config_path(folder).read_bytes())
    from nacosae.store.atomic import sha256_file

    digest.update(sha256_file(weights).encode())
    return SparseAutoencoder(
        folder,
        digest.hexdigest(),
        w_enc,
        b_enc,
        b_dec,
        activation=activation,
        threshold=threshold,
        k=k,
        apply_b_dec_to_input=bool(config.get("apply_b_dec_to_input", True)),
        normalise=normalise,
        hook_name=config.get("hook_name") or config.get("hook_point"),
        trained_on_tokens=True,
    )


def _activation(config: dict[str, Any], folder: Path) -> str:
    named = str(config.get("architecture") or config.get("activation_fn_str") or "relu").lower()
    found = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}.get(named)
    if found is None:
        raise NacosaeError(
            f"--sae {folder} is a {named!r} SAE; nacosae encodes ReLU, JumpReLU and TopK SAEs"
        )
    return found


def _config_path(folder: Path) -> Path:
    """cfg.json (SAELens), else config.json (some ViT-Prisma uploads)."""
    return next(
        (p for p in (folder / CONFIG, folder / "config.json") if p.is_file()), folder / CONFIG
    )


def _read_config(folder: Path) -> dict[str, Any]:
    path = _config_path(folder)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise NacosaeError(
            f"--sae {folder} is a folder without {CONFIG}: give a SAELens or ViT-Prisma folder, "
            "or the .safetensors file"
        ) from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NacosaeError(f"--sae {path} is not readable JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise NacosaeError(f"--sae {path} is not a JSON object")
    return config


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise NacosaeError(f"--sae {path} is not a readable safetensors file ({exc})") from exc


def _encoder(
    tensors: dict[str, torch.Tensor], name: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    weight_key = next((k for k in ENCODER_WEIGHT if k in tensors), None)
    bias_key = next((k for k in ENCODER_BIAS if k in tensors), None)
    if weight_key is None or bias_key is None:
        raise NacosaeError(
            f"--sae {name} has no {'encoder weight' if weight_key is None else 'bias'} "
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
        raise NacosaeError(f"--sae {name} has inconsistent shapes: {shapes}")
    return w_enc, b_enc, b_dec
