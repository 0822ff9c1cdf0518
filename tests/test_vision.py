"""Explained models: registry, weights from files, layer resolution, capture and pooling."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from nacosae.errors import UnknownLayer, UnknownModel, WeightsUnavailable
from nacosae.models import vision
from nacosae.models.units import pool
from nacosae.models.vision import (
    capture,
    layer_activations,
    load_vision_model,
    model_info,
    resolve_layer,
)


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModel, match="resnet18, resnet50, resnet50_imagenet, vit_b_16"):
        model_info("resnet19")


def test_any_torchvision_classification_model_is_accepted():
    info = model_info("mobilenet_v3_small")
    model = info.builder()
    assert isinstance(model, nn.Module)
    assert info.default_weights == "DEFAULT"


def test_registry_models_build_with_the_right_heads():
    assert model_info("resnet50").builder().fc.out_features == 365
    assert model_info("resnet50_imagenet").builder().fc.out_features == 1000


def test_random_init_is_reproducible():
    a, weights_id = load_vision_model("tiny_cnn", "none")
    b, _ = load_vision_model("tiny_cnn", "none")
    assert weights_id == "random-init:seed=0"
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not a.training


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pth.tar"])
def test_weights_from_a_local_state_dict(tmp_path, suffix):
    torch.manual_seed(123)
    source = vision.model_info("tiny_cnn").builder()
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    elif suffix == ".pth":
        torch.save(state, path)
    else:  # a training checkpoint with DataParallel prefixes, like the Places365 file
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    model, weights_id = load_vision_model("tiny_cnn", str(path))
    assert weights_id.startswith(f"file:weights{suffix}:sha256=")
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[name])


def test_weights_that_do_not_fit_say_which_keys(tmp_path):
    from nacosae.models.tiny import tiny_cnn

    state = tiny_cnn().state_dict()
    state["fc.weight"] = torch.zeros(3, 3)  # mis-shaped
    state["head.bias"] = torch.zeros(3)  # unexpected
    del state["conv1.weight"], state["bn1.weight"]  # missing
    path = tmp_path / "wrong.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsUnavailable) as caught:
        load_vision_model("tiny_cnn", str(path))
    message = str(caught.value)
    assert "the weights in wrong.safetensors do not fit tiny_cnn" in message
    assert "2 missing (e.g. conv1.weight, bn1.weight)" in message
    assert "1 unexpected (e.g. head.bias)" in message
    assert "1 mis-shaped (e.g. fc.weight (file [3, 3], model [10, 32]))" in message
    assert "\n" not in message


def test_weights_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"obj": object()}, path)
    with pytest.raises(WeightsUnavailable, match="cannot read weights"):
        load_vision_model("tiny_cnn", str(path))


def test_weights_neither_name_nor_file():
    with pytest.raises(WeightsUnavailable, match="neither default, none"):
        load_vision_model("tiny_cnn", "/no/such/file.safetensors")


def test_torchvision_weights_offline_and_not_cached_is_a_clear_error():
    with pytest.raises(
        WeightsUnavailable, match="offline: run `nacosae download models --model resnet18`"
    ):
        load_vision_model("resnet18", "default")


def test_torchvision_weights_from_the_torch_hub_cache(tmp_path):
    """A weights file already in the torch hub cache is used without any network."""
    from torchvision.models import ResNet18_Weights

    torch.manual_seed(7)
    reference = model_info("resnet18").builder()
    cached = vision.torch_hub_checkpoints() / ResNet18_Weights.IMAGENET1K_V1.url.split("/")[-1]
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)
    model, weights_id = load_vision_model("resnet18")
    assert weights_id == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert torch.equal(model.fc.weight, reference.fc.weight)


def test_places365_checkpoint_is_downloaded_once_and_converted(monkeypatch):
    """The Places365 URL is mocked at the download boundary; conversion runs for real."""
    torch.manual_seed(3)
    reference = model_info("resnet50").builder()
    calls = []

    def fake_download(url, dest):
        calls.append(url)
        state = {f"module.{k}": v for k, v in reference.state_dict().items()}
        torch.save({"epoch": 90, "arch": "resnet50", "state_dict": state}, dest)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(vision, "_download", fake_download)
    model, weights_id = load_vision_model("resnet50")
    assert calls == [vision.PLACES365_URL]
    assert weights_id == "places365:resnet50_places365.pth.tar"
    assert torch.equal(model.fc.weight, reference.fc.weight)
    assert (vision.torch_hub_checkpoints() / "resnet50_places365.safetensors").is_file()
    load_vision_model("resnet50")
    assert len(calls) == 1  # the converted safetensors file is reused


def test_places365_offline_without_checkpoint():
    with pytest.raises(WeightsUnavailable, match="Places365"):
        load_vision_model("resnet50")


def test_unknown_layer_lists_top_level_names():
    model, _ = load_vision_model("tiny_cnn", "none")
    with pytest.raises(UnknownLayer, match="top-level layers: conv1, bn1, relu, layer1"):
        resolve_layer(model, "layer9", "tiny_cnn")
    with pytest.raises(UnknownLayer, match="under 'layer1': 0, 1, 2"):
        resolve_layer(model, "layer1.7")
    assert isinstance(resolve_layer(model, "layer1.0"), nn.Conv2d)


def test_pooling_rules():
    maps = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(pool(maps), maps.mean(dim=(2, 3)))
    tokens = torch.randn(2, 5, 4)
    assert torch.equal(pool(tokens), tokens[:, 0])
    flat = torch.randn(2, 7)
    assert torch.equal(pool(flat), flat)
    with pytest.raises(UnknownLayer):
        pool(torch.zeros(2))


def test_capture_hooks_are_removed_even_after_errors():
    model, _ = load_vision_model("tiny_cnn", "none")
    module = resolve_layer(model, "layer2")
    with pytest.raises(RuntimeError), capture(model, "layer2"):
        assert len(module._forward_hooks) == 1
        raise RuntimeError("boom")
    assert len(module._forward_hooks) == 0


def test_layer_activations_match_a_full_forward():
    model, _ = load_vision_model("tiny_vit", "none")
    images = torch.randn(2, 3, 224, 224)
    seen = {}
    handle = model.encoder.register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
    with torch.no_grad():
        model(images)
    handle.remove()
    assert torch.allclose(layer_activations(model, "encoder", images), seen["o"][:, 0])
    heads = layer_activations(model, "heads", images)
    assert heads.shape == (2, 10)
