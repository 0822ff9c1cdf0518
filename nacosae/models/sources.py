"""Explained models beyond torchvision: `timm:NAME` and `hf:REPO_ID` (or `hf:/local/folder`).

Each loader returns the model in eval mode, a weights id (what was loaded, so stores can refuse
another model's activations) and the preprocessing its weights were trained with.
`--weights` is `default` (the published pretrained weights), `none` (seeded random init, built from
the architecture's config) or a state-dict file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae import hub
from nacosae.errors import UnknownModel, WeightsUnavailable
from nacosae.models import preprocessing
from nacosae.models.preprocessing import Preprocessing
from nacosae.models.weights import load_state_dict_file, seeded_random_init

if TYPE_CHECKING:
    from torch import nn

TIMM = "timm:"
HF = "hf:"
Loaded = tuple["nn.Module", str, Preprocessing]


def is_external(name: str) -> bool:
    return name.startswith((TIMM, HF))


# ---------------------------------------------------------------- timm


def build_timm(name: str, pretrained: bool = False) -> nn.Module:
    """A timm model by name (pretrained weights come through the HF hub cache)."""
    import timm

    arch = name.split(".")[0]
    if arch not in timm.list_models():
        close = timm.list_models(f"*{arch}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise UnknownModel(
            f"timm has no model {name!r}{hint}: see `timm.list_models()` for the names"
        )
    try:
        return timm.create_model(name, pretrained=pretrained)
    except RuntimeError as exc:  # timm's "no pretrained weights" and friends
        raise WeightsUnavailable(f"timm cannot build {name}: {exc}".splitlines()[0]) from exc
    except OSError as exc:  # the hub cannot be reached, or the file is not cached offline
        raise WeightsUnavailable(
            f"the pretrained weights of timm:{name} are not in the HF cache and cannot be "
            "downloaded"
            + (" (HF_HUB_OFFLINE is set)" if hub.offline() else "")
            + ": connect once, or pass --weights PATH to a local state dict"
        ) from exc


def load_timm(name: str, weights: str) -> Loaded:
    if weights in ("none", "random"):
        weights_id = seeded_random_init()
        model = build_timm(name)
    elif weights == "default":
        model = build_timm(name, pretrained=True)
        tag = model.pretrained_cfg.get("hf_hub_id") or model.pretrained_cfg.get("tag") or name
        weights_id = f"timm:{tag}"
    else:
        model = build_timm(name)
        weights_id = load_state_dict_file(model, weights, f"timm:{name}")
    return model.eval(), weights_id, preprocessing.from_timm(model)


# ---------------------------------------------------------------- Hugging Face


def _hf_config(repo: str, revision: str | None) -> Any:
    from transformers import AutoConfig

    from nacosae.models.revisions import from_pretrained_kwargs

    try:
        return AutoConfig.from_pretrained(repo, **from_pretrained_kwargs(repo, revision))
    except (OSError, ValueError) as exc:
        raise UnknownModel(
            f"cannot read the config of hf:{repo}: {exc}".splitlines()[0]
            + " (a hub repo id or a local folder with config.json)"
        ) from exc


def hf_model_class(config: Any) -> Any:
    """The class that gives the vision network of `config`: the image classifier when the
    checkpoint is one, the CLIP/SigLIP vision tower for two-tower models, else the backbone."""
    import transformers

    architectures = config.architectures or []
    if any(a.endswith("ForImageClassification") for a in architectures):
        return transformers.AutoModelForImageClassification
    towers = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}
    if config.model_type in towers:
        return getattr(transformers, towers[config.model_type])
    return transformers.AutoModel


def load_hf(repo: str, weights: str) -> Loaded:
    import transformers  # noqa: F401 - imported before its progress bars are calmed

    from nacosae import progress
    from nacosae.models.revisions import from_pretrained_kwargs, resolve_revision

    progress.calm_libraries()
    if repo.startswith(("/", ".", "~")) and not Path(repo).expanduser().is_dir():
        raise UnknownModel(f"hf:{repo}: the folder {repo} does not exist")
    try:
        revision = resolve_revision(repo, what=f"hf:{repo}")
    except ValueError as exc:  # huggingface_hub's repo-id validation
        raise UnknownModel(f"hf:{repo} is neither a hub repo id nor a folder: {exc}") from exc
    config = _hf_config(repo, revision)
    model_class = hf_model_class(config)
    if model_class.__name__ in ("CLIPVisionModel", "SiglipVisionModel"):
        config = config.vision_config
    if weights != "default":  # random init, then a state-dict file unless none/random
        weights_id = seeded_random_init()
        model = model_class.from_config(config)
        if weights not in ("none", "random"):
            weights_id = load_state_dict_file(model, weights, f"hf:{repo}")
    else:
        try:
            model = model_class.from_pretrained(repo, **from_pretrained_kwargs(repo, revision))
        except OSError as exc:
            raise WeightsUnavailable(
                f"cannot load the weights of hf:{repo}: {exc}".splitlines()[0]
            ) from exc
        weights_id = f"hf:{Path(repo).name if Path(repo).is_dir() else repo}@{revision}"
    return model.eval(), weights_id, hf_preprocessing(repo, revision)


def hf_preprocessing(repo: str, revision: str | None) -> Preprocessing:
    """The recipe of the repo's image processor; ImageNet's when it has none."""
    from transformers.image_processing_base import ImageProcessingMixin

    from nacosae.models.revisions import from_pretrained_kwargs

    try:
        config, _ = ImageProcessingMixin.get_image_processor_dict(
            repo, **from_pretrained_kwargs(repo, revision)
        )
    except OSError:
        return preprocessing.DEFAULT
    return preprocessing.from_image_processor(config, f"hf:{repo}")


def load_external(name: str, weights: str) -> Loaded:
    if name.startswith(TIMM):
        return load_timm(name[len(TIMM) :], weights)
    return load_hf(name[len(HF) :], weights)
