"""`nacosae controls` end to end, in-process, on real (random-weight) torchvision models."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torchvision import transforms

from nacosae.config import settings
from nacosae.controls import ControlsRequest, open_controls
from nacosae.errors import CorruptStore
from nacosae.models.vision import model_info
from tests.conftest import write_image_tree
from tests.killing import kill_cli_when

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def save_random_weights(name: str, path: Path, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = model_info(name).builder().eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def direct_activations(model, module, tree: Path) -> torch.Tensor:
    """Reference: torchvision's classic transforms, a plain hook, the full forward pass."""
    transform = transforms.Compose(
        [
            transforms.Resize(224),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    files = sorted(p for p in tree.glob("*/*") if p.suffix in (".jpg", ".png"))
    batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in files])
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(batch)
    handle.remove()
    out = seen[0]
    return out.flatten(1) if out.dim() == 4 else out[:, 0]


def stored(home: Path, model: str, layer: str) -> torch.Tensor:
    return open_controls(home / "controls", model, layer).image_major()


@pytest.mark.parametrize(
    ("model_name", "layer", "dtype", "tolerance"),
    [
        ("resnet18", "avgpool", "float32", 1e-4),
        ("resnet18", "avgpool", "float16", 1e-2),
        ("tiny_vit", "encoder", "float32", 1e-4),
        ("tiny_vit", "encoder", "float16", 1e-2),
    ],
)
def test_store_equals_direct_torchvision(
    invoke, isolated_env, image_tree, tmp_path, model_name, layer, dtype, tolerance
):
    weights = tmp_path / "weights.safetensors"
    model = save_random_weights(model_name, weights, seed=11)
    result = invoke(
        "controls", "--model", model_name, "--layer", layer, "--images", image_tree,
        "--weights", weights, "--dtype", dtype, "--batch-size", "5", "--shard-size", "5",
        "--workers", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = direct_activations(model, model.get_submodule(layer), image_tree)
    got = stored(isolated_env, model_name, layer)
    assert got.dtype == getattr(torch, dtype)
    assert got.shape == expected.shape
    torch.testing.assert_close(got.float(), expected, atol=tolerance, rtol=tolerance)
    store = open_controls(isolated_env / "controls", model_name, layer)
    torch.testing.assert_close(
        store.unit(3).float(), expected[:, 3], atol=tolerance, rtol=tolerance
    )
    torch.testing.assert_close(
        store.class_means()[1], got[4:8].float().mean(0), atol=1e-5, rtol=1e-5
    )


def test_index_describes_the_store(invoke, isolated_env, image_tree):
    result = invoke("controls", "--model", "tiny_cnn", "--images", image_tree, "--shard-size", "5")
    assert result.exit_code == 0, result.output
    index = json.loads((isolated_env / "controls/tiny_cnn/avgpool/index.json").read_text())
    assert index["format_version"] == 2
    assert index["model"] == "tiny_cnn" and index["layer"] == "avgpool"
    assert index["weights"] == "random-init:seed=0"
    assert index["dataset"].startswith("val:12:sha256=")
    assert index["n_units"] == 32 and index["n_images"] == 12
    assert [c["rows"] for c in index["classes"]] == [[0, 4], [4, 8], [8, 12]]
    assert [s["file"] for s in index["shards"]] == [
        f"activations-0000{i}-of-00003.safetensors" for i in (1, 2, 3)
    ]
    assert all(len(s["sha256"]) == 64 for s in index["shards"])
    assert "Resize(224" in index["preprocessing"] and "class token" in index["pooling"]
    assert index["nacosae_version"] and index["created"]
    store = isolated_env / "controls/tiny_cnn/avgpool"
    umask = os.umask(0o022)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in store.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # shards readable as index.json is


def test_list_shows_stores(invoke, image_tree):
    assert invoke("controls", "--list").output.startswith("no control stores")
    invoke("controls", "--model", "tiny_cnn", "--layer", "layer2", "--images", image_tree)
    result = invoke("controls", "--list")
    assert result.exit_code == 0
    assert "tiny_cnn" in result.output and "layer2" in result.output
    assert "complete" in result.output


def test_rerun_keeps_a_complete_store(invoke, isolated_env, image_tree):
    args = ("controls", "--model", "tiny_cnn", "--images", image_tree)
    invoke(*args)
    units = isolated_env / "controls/tiny_cnn/avgpool/units.safetensors"
    stamp = units.stat().st_mtime_ns
    result = invoke(*args)
    assert result.exit_code == 0
    assert "already complete" in result.output
    assert units.stat().st_mtime_ns == stamp


def test_unreadable_image_is_skipped_counted_and_named(invoke, isolated_env, image_tree, tmp_path):
    tree = tmp_path / "val"
    shutil.copytree(image_tree, tree)
    (tree / "class_01" / "img_001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    result = invoke("controls", "--model", "tiny_cnn", "--images", tree, "--shard-size", "3")
    assert result.exit_code == 0, result.output
    assert "1 unreadable images skipped (class_01/img_001.jpg)" in result.output
    index = json.loads((isolated_env / "controls/tiny_cnn/avgpool/index.json").read_text())
    assert index["skipped"] == ["class_01/img_001.jpg"]
    assert index["n_images"] == 11
    assert [c["rows"] for c in index["classes"]] == [[0, 4], [4, 7], [7, 11]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model", "resnet19"), "unknown model 'resnet19': use one of resnet18"),
        (("--model", "tiny_cnn", "--layer", "layer7"), "tiny_cnn has no layer 'layer7'"),
        (("--model", "tiny_cnn", "--device", "cuda"), "CUDA is not available"),
        (("--model", "tiny_cnn", "--weights", "nope.pt"), "--weights 'nope.pt' is neither"),
    ],
)
def test_bad_arguments(invoke, isolated_env, image_tree, args, message):
    result = invoke("controls", "--images", image_tree, *args)
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {message}")
    assert not (isolated_env / "controls").exists() or not any(
        (isolated_env / "controls").rglob("*.safetensors")
    )


def test_bad_image_folders(invoke, tmp_path):
    (tmp_path / "empty").mkdir()
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.jpg")
    for folder, message in [
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "empty", "no class folders"),
        (flat, "images but no class folders"),
    ]:
        result = invoke("controls", "--model", "tiny_cnn", "--images", folder)
        assert result.exit_code == 1
        assert message in result.output.splitlines()[0]


def test_conflicting_store_needs_overwrite(invoke, isolated_env, image_tree, tmp_path):
    invoke("controls", "--model", "tiny_cnn", "--images", image_tree)
    weights = tmp_path / "w.safetensors"
    save_random_weights("tiny_cnn", weights, seed=5)
    args = ("controls", "--model", "tiny_cnn", "--images", image_tree, "--weights", weights)
    before = stored(isolated_env, "tiny_cnn", "avgpool")
    result = invoke(*args)
    assert result.exit_code == 1
    assert "a different store exists" in result.output and "--overwrite" in result.output
    assert torch.equal(stored(isolated_env, "tiny_cnn", "avgpool"), before)
    result = invoke(*args, "--overwrite")
    assert result.exit_code == 0
    assert not torch.equal(stored(isolated_env, "tiny_cnn", "avgpool"), before)


def test_damaged_store_is_named_on_open(invoke, isolated_env, image_tree):
    invoke("controls", "--model", "tiny_cnn", "--images", image_tree, "--shard-size", "5")
    shard = isolated_env / "controls/tiny_cnn/avgpool/activations-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CorruptStore, match="activations-00002-of-00003.safetensors"):
        open_controls(isolated_env / "controls", "tiny_cnn", "avgpool")
    result = invoke("controls", "--model", "tiny_cnn", "--images", image_tree, "--shard-size", "5")
    assert result.exit_code == 1
    assert "activations-00002-of-00003.safetensors is truncated" in result.output
    assert "--overwrite" in result.output.splitlines()[0]


def tensors_of(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.mark.slow
def test_sigkilled_run_resumes_to_an_identical_store(invoke, tmp_path, monkeypatch):
    tree = write_image_tree(tmp_path / "val", classes=4, per_class=6, seed=1)
    args = [
        "controls", "--model", "resnet18", "--weights", "none", "--images", str(tree),
        "--shard-size", "4", "--batch-size", "2", "--workers", "0",
    ]  # fmt: skip
    killed_home = tmp_path / "killed"
    env = {**os.environ, "NACOSAE_HOME": str(killed_home)}
    index_path = killed_home / "controls/resnet18/avgpool/index.json"

    def two_shards_written() -> bool:
        try:
            return len(json.loads(index_path.read_text())["shards"]) >= 2
        except (FileNotFoundError, json.JSONDecodeError):
            return False

    killed = kill_cli_when(args, env, two_shards_written, timeout=120)
    assert killed, "the run ended before it could be killed"
    assert json.loads(index_path.read_text())["status"] == "building"

    monkeypatch.setenv("NACOSAE_HOME", str(killed_home))
    settings.cache_clear()
    resumed = invoke(*args)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming:" in resumed.output

    whole_home = tmp_path / "whole"
    monkeypatch.setenv("NACOSAE_HOME", str(whole_home))
    settings.cache_clear()
    assert invoke(*args).exit_code == 0

    a_dir = killed_home / "controls/resnet18/avgpool"
    b_dir = whole_home / "controls/resnet18/avgpool"
    a_index = json.loads((a_dir / "index.json").read_text())
    b_index = json.loads((b_dir / "index.json").read_text())
    for key in ("identity", "n_units", "n_images", "classes", "spans", "skipped", "status"):
        assert a_index[key] == b_index[key]
    assert [s["rows"] for s in a_index["shards"]] == [s["rows"] for s in b_index["shards"]]
    assert sorted(p.name for p in a_dir.iterdir()) == sorted(p.name for p in b_dir.iterdir())
    for name in [s["file"] for s in a_index["shards"]] + ["units.safetensors"]:
        a, b = tensors_of(a_dir / name), tensors_of(b_dir / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}:{key} differs"


def test_a_node_without_the_images_says_they_must_be_at_the_same_path(image_tree, tmp_path):
    """What a Ray worker on a node without the image folder reports (`controls --ray`)."""
    from nacosae.controls.model_side import ControlsJob
    from nacosae.data.images import list_image_folder
    from nacosae.errors import NacosaeError
    from nacosae.models.cache import ModelCache

    moved = shutil.copytree(image_tree, tmp_path / "val")
    listing = list_image_folder(moved)
    request = ControlsRequest("tiny_cnn", "avgpool", moved, tmp_path / "controls", "none")
    job = ControlsJob(request, listing, [(0, len(listing))])
    shutil.rmtree(moved)
    with pytest.raises(NacosaeError, match="every node needs them at the same path"):
        job.build(ModelCache())
