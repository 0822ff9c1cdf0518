"""Explained vision models: registry, weights, layer capture.

A model is named (`resnet18`, `resnet50` = Places365, `resnet50_imagenet`, `vit_b_16`, the tiny
test models, any torchvision classification model, `timm:NAME` or `hf:REPO_ID`, see
`models/sources.py`) and given weights (`default`, `none`, a torchvision weights name such as
`IMAGENET1K_V2`, or a path to a state dict). A layer is a module path; its output becomes units
as `models/units.py` says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae.errors import UnknownLayer, UnknownModel, WeightsUnavailable
from nacosae.hub import offline
from nacosae.models import preprocessing
from nacosae.models.cache import ModelHandle, ModelSpec
from nacosae.models.preprocessing import Preprocessing, Triple
from nacosae.models.residency import OffloadMode
from nacosae.models.units import Readout
from nacosae.models.weights import (
    load_exactly,
    load_state_dict_file,
    read_state_dict,
    seeded_random_init,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL.Image import Image
    from torch import nn

    from nacosae.models.backoff import BackOff

PLACES365_URL = "http://places2.csail.mit.edu/models_places365/resnet50_places365.pth.tar"
PLACES365_FILE = "resnet50_places365.pth.tar"


@dataclass(frozen=True)
class VisionModelInfo:
    """How to build a named model and which weights it gets by default."""

    name: str
    builder: Callable[[], nn.Module]
    default_weights: str  # a torchvision weights name, "places365" or "random"
    description: str


def _torchvision_builder(arch: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(arch, weights=None, **kwargs)

    return build


def _tiny_builder(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from nacosae.models import tiny

        return getattr(tiny, name)()

    return build


REGISTRY: dict[str, VisionModelInfo] = {
    "resnet18": VisionModelInfo(
        "resnet18", _torchvision_builder("resnet18"), "IMAGENET1K_V1", "ResNet-18, ImageNet-1k"
    ),
    "resnet50": VisionModelInfo(
        "resnet50",
        _torchvision_builder("resnet50", num_classes=365),
        "places365",
        "ResNet-50, Places365 (the Places365 project's checkpoint)",
    ),
    "resnet50_imagenet": VisionModelInfo(
        "resnet50_imagenet",
        _torchvision_builder("resnet50"),
        "IMAGENET1K_V1",
        "ResNet-50, ImageNet-1k (torchvision V1 weights, as in CoSy)",
    ),
    "vit_b_16": VisionModelInfo(
        "vit_b_16", _torchvision_builder("vit_b_16"), "IMAGENET1K_V1", "ViT-B/16, ImageNet-1k"
    ),
    "tiny_cnn": VisionModelInfo(
        "tiny_cnn", _tiny_builder("tiny_cnn"), "random", "tiny random CNN for tests (meaningless)"
    ),
    "tiny_vit": VisionModelInfo(
        "tiny_vit", _tiny_builder("tiny_vit"), "random", "tiny random ViT for tests (meaningless)"
    ),
}


def torchvision_classification_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def model_info(name: str) -> VisionModelInfo:
    """Registry entry for `name`, or a torchvision classification model of that name."""
    if name in REGISTRY:
        return REGISTRY[name]
    if name in torchvision_classification_models():
        return VisionModelInfo(name, _torchvision_builder(name), "DEFAULT", f"torchvision {name}")
    known = ", ".join(REGISTRY)
    raise UnknownModel(
        f"unknown model {name!r}: use one of {known}, or any torchvision classification model "
        "name (torchvision.models.list_models())"
    )


# ---------------------------------------------------------------- weights


def torch_hub_checkpoints() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _download_command(name: str) -> str:
    return f"`nacosae download models --model {name}`"


def places365_safetensors() -> Path:
    """The Places365 ResNet-50 weights as safetensors, converted once from the published file."""
    from safetensors.torch import save_file

    checkpoints = torch_hub_checkpoints()
    converted = checkpoints / "resnet50_places365.safetensors"
    if converted.is_file():
        return converted
    original = checkpoints / PLACES365_FILE
    if not original.is_file():
        if offline():
            raise WeightsUnavailable(
                f"the Places365 ResNet-50 checkpoint is not in {checkpoints} and the hub is "
                f"offline: run {_download_command('resnet50')} with network access first"
            )
        checkpoints.mkdir(parents=True, exist_ok=True)
        _download(PLACES365_URL, original)
    state = read_state_dict(original)
    tmp = converted.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(converted)
    return converted


def _download(url: str, dest: Path) -> None:
    """Fetch `url` to `dest` (torch hub's downloader writes a temporary file, then renames)."""
    import torch

    try:
        torch.hub.download_url_to_file(url, str(dest), progress=True)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise WeightsUnavailable(
            f"could not download {url}: {exc}".splitlines()[0]
            + " (check the network, or pass --weights PATH to a local file)"
        ) from exc


def _torchvision_weights(arch: str, weights_name: str) -> Any:
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        return None
    return getattr(enum, weights_name, None)


def torchvision_weights_file(name: str, weights: Any) -> Path:
    """The torch hub cache file of torchvision `weights`, downloaded on first use."""
    cached = torch_hub_checkpoints() / Path(weights.url).name
    if not cached.is_file():
        if offline():
            raise WeightsUnavailable(
                f"{name} weights {weights} are not cached in {cached.parent} and the hub is "
                f"offline: run {_download_command(name)} with network access first"
            )
        cached.parent.mkdir(parents=True, exist_ok=True)
        _download(weights.url, cached)
    return cached


def default_weights_file(name: str) -> Path | None:
    """Fetch the default weights of model `name` into the torch hub cache (None: random init)."""
    info = model_info(name)
    if info.default_weights == "random":
        return None
    if info.default_weights == "places365":
        return places365_safetensors()
    return torchvision_weights_file(name, _torchvision_weights(_arch(info), info.default_weights))


def _arch(info: VisionModelInfo) -> str:
    return {"resnet50_imagenet": "resnet50"}.get(info.name, info.name)


def load_vision_model(name: str, weights: str = "default") -> tuple[nn.Module, str]:
    """Build model `name` with `weights`; returns the model in eval mode and a weights id.

    The weights id names what was loaded (a torchvision weights name, the Places365 file, a
    local file's sha256, or seeded random init) so stores can refuse mismatched requests. The
    model's own preprocessing recipe is attached as `model.nacosae_preprocessing`.
    """
    from nacosae.models import sources

    if sources.is_external(name):
        model, weights_id, recipe = sources.load_external(name, weights)
        model.nacosae_preprocessing = recipe
        return model, weights_id
    info = model_info(name)
    choice = info.default_weights if weights == "default" else weights
    recipe = preprocessing.DEFAULT
    if choice in ("none", "random"):
        weights_id = seeded_random_init()
        model = info.builder()
    elif choice == "places365":
        model = info.builder()
        state = read_state_dict(places365_safetensors())
        load_exactly(model, state, PLACES365_FILE, name)
        weights_id = f"places365:{PLACES365_FILE}"
        recipe = PLACES365_PREPROCESSING
    elif (tv := _torchvision_weights(_arch(info), choice)) is not None:
        model = info.builder()
        state = read_state_dict(torchvision_weights_file(info.name, tv))
        load_exactly(model, state, Path(tv.url).name, name)
        weights_id = f"torchvision:{tv}"
        recipe = preprocessing.from_torchvision(tv)
    else:
        if not Path(choice).expanduser().exists():
            raise WeightsUnavailable(
                f"--weights {choice!r} is neither default, none, a torchvision weights name for "
                f"{name} nor an existing file"
            )
        model = info.builder()
        weights_id = load_state_dict_file(model, choice, name)
    model.nacosae_preprocessing = recipe
    return model.eval(), weights_id


def named_weights_id(name: str, weights: str = "default") -> str | None:
    """The weights id `load_vision_model(name, weights)` would report, where the weights' name
    says it (random init, Places365, a torchvision weights name); None where only loading the
    weights tells (timm, hf:, a state-dict file)."""
    from nacosae.models import sources

    if sources.is_external(name):
        return None
    try:
        info = model_info(name)
    except UnknownModel:  # a module handed to the Python API: its own id, known once loaded
        return None
    choice = info.default_weights if weights == "default" else weights
    if choice in ("none", "random"):
        from nacosae.models.weights import RANDOM_INIT_ID

        return RANDOM_INIT_ID
    if choice == "places365":
        return f"places365:{PLACES365_FILE}"
    if (tv := _torchvision_weights(_arch(info), choice)) is not None:
        return f"torchvision:{tv}"
    return None


def declared_weights_id(name: str, weights: str = "default") -> str:
    """The weights id of `name` with `weights` (an imported store must carry the id explain
    will find): from the name where it says it, else by loading them."""
    return named_weights_id(name, weights) or load_vision_model(name, weights)[1]


def weights_option(weights_id: str) -> str:
    """The `--weights` value that gives a weights id (for a store's error message)."""
    from nacosae.models.weights import RANDOM_INIT_ID

    if weights_id == RANDOM_INIT_ID:
        return "none"
    if weights_id.startswith("places365:"):
        return "places365"
    if weights_id.startswith("torchvision:"):
        return weights_id.rsplit(".", 1)[-1]
    return f"the file or weights it names ({weights_id})"


# the Places365 project's own demo: squash to 256 x 256, then center crop 224
PLACES365_PREPROCESSING = Preprocessing(size=224, resize=256, squash=True, source="Places365 demo")


# ---------------------------------------------------------------- layers and pooling


def resolve_layer(model: nn.Module, layer: str, model_name: str = "the model") -> nn.Module:
    """The module at dotted path `layer`, or an error listing what exists there."""
    module = model
    walked: list[str] = []
    for part in layer.split("."):
        children = dict(module.named_children())
        if part not in children:
            where = ".".join(walked)
            options = ", ".join(children) or "(no sub-layers)"
            scope = f"under {where!r}" if walked else "top-level layers"
            raise UnknownLayer(
                f"{model_name} has no layer {layer!r}; {scope}: {options}"
                + ("" if walked else " (use dots for nested modules, e.g. layer4.1.conv2)")
            )
        module = children[part]
        walked.append(part)
    return module


class _StopForward(Exception):
    """Raised by the capture hook so the rest of the network is not computed."""


@contextmanager
def capture(model: nn.Module, layer: str, stop: bool = True) -> Iterator[dict[str, Any]]:
    """Record the output of `layer` during a forward pass; the hook is always removed.

    With `stop=True` the forward pass ends at the layer (nothing after it is computed).
    """
    module = resolve_layer(model, layer)
    box: dict[str, Any] = {}

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
        box["output"] = first_tensor(output)
        if stop:
            raise _StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def first_tensor(output: Any) -> Any:
    """A module's main output: the tensor itself, the first item of a tuple, or the first field
    of a transformers ModelOutput (`last_hidden_state`, `logits`, ...)."""
    if hasattr(output, "to_tuple"):
        output = output.to_tuple()
    return output[0] if isinstance(output, tuple | list) else output


def layer_activations(
    model: nn.Module, layer: str, images: torch.Tensor, readout: Readout | None = None
) -> torch.Tensor:
    """Activations `[batch, units]` of `layer` (pooled, then the SAE if any) for a batch of
    preprocessed images."""
    import torch

    with torch.inference_mode(), capture(model, layer) as box, suppress(_StopForward):
        model(images)
    if "output" not in box:
        raise UnknownLayer(f"layer {layer!r} is not used in the model's forward pass")
    return (readout or Readout())(box["output"])


def own_preprocessing(model: nn.Module) -> Preprocessing:
    """The recipe `load_vision_model` attached (the default for a module from elsewhere)."""
    return getattr(model, "nacosae_preprocessing", preprocessing.DEFAULT)


def input_size(model: nn.Module) -> int:
    return own_preprocessing(model).size


def count_units(
    model: nn.Module, layer: str, device: str, dtype: torch.dtype, readout: Readout | None = None
) -> int:
    """Number of units of `layer`, found with one forward pass of a blank image."""
    import torch

    side = input_size(model)
    probe = torch.zeros(1, 3, side, side, device=device, dtype=dtype)
    return int(layer_activations(model, layer, probe, readout).shape[1])


@dataclass(frozen=True)
class LayerInfo:
    path: str
    kind: str
    shape: tuple[int, ...] | None  # output shape for one image; None: not run in forward
    units: int | None  # values per image after pooling


def list_layers(model: nn.Module) -> list[LayerInfo]:
    """Every named module with its output shape on one image (one forward pass with hooks)."""
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for path, module in model.named_modules():
        if not path:
            continue

        def hook(_m: nn.Module, _i: Any, output: Any, path: str = path) -> None:
            tensor = first_tensor(output)
            if isinstance(tensor, torch.Tensor) and path not in shapes:
                shapes[path] = tuple(tensor.shape)

        handles.append(module.register_forward_hook(hook))
    side = input_size(model)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else "cpu"
    dtype = parameter.dtype if parameter is not None else torch.float32
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, side, side, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    layers = []
    for path, module in model.named_modules():
        if not path:
            continue
        shape = shapes.get(path)
        units = None
        if shape is not None and len(shape) in (2, 3, 4):
            units = shape[1] if len(shape) in (2, 4) else shape[2]
        layers.append(LayerInfo(path, type(module).__name__, shape, units))
    return layers


# ---------------------------------------------------------------- in the model cache

VISION_BATCH = 64  # images per forward pass of the explained model on generated images


def vision_spec(
    model: str, weights: str, device: str, dtype: str, offload: OffloadMode = "none"
) -> ModelSpec:
    """The cache key of an explained model: name, weights, device, dtype and offload mode."""
    return ModelSpec(
        kind="vision",
        id=model,
        dtype=dtype,
        device=device,
        offload=offload,
        options=(("weights", weights),),
    )


def load_vision(spec: ModelSpec) -> nn.Module:
    """ModelCache loader for kind 'vision' (weights in `spec.options`)."""
    import torch

    model, weights_id = load_vision_model(spec.id, dict(spec.options).get("weights", "default"))
    model = model.to(getattr(torch, spec.dtype))
    model.nacosae_weights_id = weights_id
    return model


def model_preprocessing(
    model: nn.Module,
    image_size: int | None = None,
    mean: Triple | None = None,
    std: Triple | None = None,
) -> Preprocessing:
    """The model's own input recipe with the user's overrides."""
    return own_preprocessing(model).overridden(image_size, mean, std)


def vision_activations(
    vision: ModelHandle,
    layer: str,
    recipe: Preprocessing,
    readout: Readout,
    backoff: BackOff | None = None,
) -> Callable[[list[Image]], np.ndarray]:
    """Images -> [n, units] activations of every unit of `layer` (with the control store's
    preprocessing and readout), the model taken from the cache per batch; batches of the
    back-off's `vision` size (halved on out-of-memory)."""
    import numpy as np
    import torch

    from nacosae.models.backoff import BackOff

    transform = recipe.transform()
    dtype = getattr(torch, vision.spec.dtype)
    batches = backoff or BackOff({"vision": VISION_BATCH})

    def one_batch(images: list[Image]) -> list[np.ndarray]:
        batch = torch.stack([transform(im.convert("RGB")) for im in images])
        with vision.use() as model:
            units = layer_activations(
                model, layer, batch.to(vision.spec.device, dtype=dtype), readout
            )
        return list(units.float().cpu().numpy())

    def activations(images: list[Image]) -> np.ndarray:
        return np.stack(batches.run("vision", images, one_batch))

    return activations


def weights_id_of(vision: ModelHandle) -> str:
    """What `load_vision` loaded (the id control stores are checked against)."""
    with vision.use() as model:
        return model.nacosae_weights_id
