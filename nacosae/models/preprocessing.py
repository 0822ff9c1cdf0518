"""How images become an explained model's input: each model's own published transform.

Every source reduces to one recipe: resize (the shorter side, or both sides when `squash`), center
crop to `size`, scale to [0, 1], normalise with `mean`/`std`. The recipe is taken from the weights
(torchvision weights' `transforms()`, timm's `resolve_data_config`, the Hugging Face image
processor's config), may be overridden (`--image-size`, `--mean`, `--std`), and is recorded in the
control store and the concept-cache key so that activations computed with other preprocessing are
never mixed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from nacosae.errors import NacosaeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
# PIL's resample codes, as Hugging Face image processors store them
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class Preprocessing:
    """One model's input recipe (see the module docstring)."""

    size: int  # side of the square model input (the center crop)
    resize: int  # the shorter side before cropping (both sides when `squash`)
    mean: Triple = IMAGENET_MEAN
    std: Triple = IMAGENET_STD
    interpolation: str = "bilinear"
    squash: bool = False  # resize to resize x resize, ignoring the aspect ratio
    source: str = "default"  # where the recipe came from; not part of its identity

    def describe(self) -> str:
        """The recipe in words; equal recipes give equal text (this is what stores record)."""
        mean = ", ".join(f"{v:g}" for v in self.mean)
        std = ", ".join(f"{v:g}" for v in self.std)
        resize = f"{self.resize}x{self.resize}" if self.squash else str(self.resize)
        return (
            f"RGB; Resize({resize}, {self.interpolation}, antialias); CenterCrop({self.size}); "
            f"Normalize(mean=({mean}), std=({std}))"
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocessing:
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})

    def overridden(
        self,
        image_size: int | None = None,
        mean: Triple | None = None,
        std: Triple | None = None,
    ) -> Preprocessing:
        """The recipe with the user's overrides: `image_size` N resizes the shorter side to N
        and crops N x N (the original project's Resize(224) + CenterCrop(224) is 224)."""
        changed = replace(
            self,
            size=image_size or self.size,
            resize=image_size or self.resize,
            squash=self.squash and image_size is None,
            mean=tuple(mean) if mean else self.mean,
            std=tuple(std) if std else self.std,
        )
        if changed != self:
            changed = replace(changed, source=f"{self.source}, overridden")
        return changed

    def transform(self) -> Any:
        """The recipe as torchvision v2 transforms, PIL image in, float tensor out."""
        import torch
        from torchvision.transforms import InterpolationMode, v2

        mode = InterpolationMode(self.interpolation)
        resize = (self.resize, self.resize) if self.squash else self.resize
        return v2.Compose(
            [
                v2.Resize(resize, interpolation=mode, antialias=True),
                v2.CenterCrop(self.size),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(self.mean, self.std),
            ]
        )


DEFAULT = Preprocessing(size=224, resize=224, source="ImageNet default")
"""For random-weight and tiny models: the original project's Resize(224) + CenterCrop(224)."""


def from_torchvision(weights: Any) -> Preprocessing:
    """The recipe of torchvision weights (their `transforms()` preset)."""
    preset = weights.transforms()
    return Preprocessing(
        size=int(preset.crop_size[0]),
        resize=int(preset.resize_size[0]),
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        interpolation=preset.interpolation.value,
        source=f"torchvision {weights}",
    )


def from_timm(model: Any) -> Preprocessing:
    """The recipe of a timm model's pretrained config (`timm.data.resolve_data_config`)."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    size = int(config["input_size"][-1])
    crop_pct = float(config.get("crop_pct") or 1.0)
    interpolation = config.get("interpolation", "bilinear")
    return Preprocessing(
        size=size,
        resize=int(size / crop_pct),  # timm's own rounding (math.floor)
        mean=tuple(config["mean"]),
        std=tuple(config["std"]),
        interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
        source=f"timm {getattr(model, 'pretrained_cfg', {}).get('hf_hub_id') or 'config'}",
    )


def from_image_processor(config: dict[str, Any], name: str) -> Preprocessing:
    """The recipe of a Hugging Face image processor config (preprocessor_config.json).

    `size` is either `shortest_edge` (resize the shorter side; ConvNeXt's `crop_pct` scales it
    as in its processor) or `height`/`width` (ViT, DINOv2 crops: squash to that size), then an
    optional center crop to `crop_size`.
    """
    size = config.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = config.get("crop_size") or {}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    do_crop = bool(config.get("do_center_crop", bool(crop)))
    resample = PIL_RESAMPLE.get(int(config.get("resample", 2)), "bilinear")
    mean = tuple(config.get("image_mean") or IMAGENET_MEAN)
    std = tuple(config.get("image_std") or IMAGENET_STD)
    if "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if "crop_pct" in config and config["crop_pct"] and edge < 384:  # ConvNeXt
            return Preprocessing(
                size=edge,
                resize=int(edge / float(config["crop_pct"])),
                mean=mean,
                std=std,
                interpolation=resample,
                source=f"image processor of {name}",
            )
        cropped = int(crop.get("height", edge)) if do_crop else edge
        return Preprocessing(
            cropped, edge, mean, std, resample, False, f"image processor of {name}"
        )
    if "height" in size:
        side = int(size["height"])
        cropped = int(crop.get("height", side)) if do_crop else side
        return Preprocessing(cropped, side, mean, std, resample, True, f"image processor of {name}")
    raise NacosaeError(
        f"cannot read the image size of {name}'s image processor ({size}): pass --image-size, "
        "--mean and --std"
    )


def check_image_size(image_size: int | None) -> None:
    """`--image-size` is a side in pixels: a model needs at least a few."""
    if image_size is not None and image_size < 8:
        raise NacosaeError("--image-size must be at least 8 pixels")


def parse_triple(text: str | None, option: str) -> Triple | None:
    """`0.5,0.5,0.5` -> (0.5, 0.5, 0.5); a one-line error for anything else."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", ",").split(",") if v)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise NacosaeError(f"{option} {text!r} is not three numbers: write e.g. 0.5,0.5,0.5")
    if option == "--std" and min(values) <= 0:
        raise NacosaeError(f"{option} {text!r} has a value <= 0: standard deviations are positive")
    return values  # type: ignore[return-value]
