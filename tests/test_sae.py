"""SAE latents of vision transformers as SAE researchers have them: a SAELens folder on the
residual stream's tokens, each token encoded, and the latent's value for an image the max, mean
or class token over its tokens; checked on a real architecture (torchvision vit_b_16, seeded
random weights) against an independent computation."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from nacosae.errors import NacosaeError
from nacosae.store.activations import ControlStore

HOOK_LAYER = "encoder.layers.encoder_layer_11"


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("vit-images") / "val"
    rng = np.random.default_rng(1)
    for name in ("a_class", "b_class"):
        (root / name).mkdir(parents=True)
        for k in range(1):  # two images in all: each forward pass of ViT-B costs ~0.5 s here
            pixels = rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{k}.png")
    return root


def sae_weights(d_in=768, d_sae=64):
    generator = torch.Generator().manual_seed(0)
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=generator) * 0.05,
        "b_enc": torch.randn(d_sae, generator=generator) * 0.1,
        "b_dec": torch.randn(d_in, generator=generator) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=generator),
    }


def write_saelens(folder, weights, **config):
    folder.mkdir(parents=True)
    d_in, d_sae = weights["W_enc"].shape
    cfg = {
        "d_in": d_in,
        "d_sae": d_sae,
        "hook_name": "blocks.11.hook_resid_post",
        "architecture": "standard",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        **config,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file(weights, str(folder / "sae_weights.safetensors"))
    return folder


@pytest.fixture(scope="module")
def vit():
    from nacosae.models.vision import load_vision_model

    return load_vision_model("vit_b_16", "none")[0]


def expected_latents(model, tree, weights, pooling, recipe):
    """Forward hook on block 11, every token encoded by hand, pooled per latent."""
    from nacosae.models.preprocessing import Preprocessing

    transform = Preprocessing.from_json(recipe).transform()
    files = sorted(tree.glob("*/*.png"))
    batch = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    seen = {}
    block = dict(model.named_modules())[HOOK_LAYER]
    handle = block.register_forward_hook(lambda m, i, o: seen.setdefault("tokens", o))
    with torch.inference_mode():
        model(batch)
    handle.remove()
    tokens = seen["tokens"]  # [images, 197, 768]
    z = torch.relu((tokens - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"])
    return {"max": z.amax(dim=1), "mean": z.mean(dim=1), "cls": z[:, 0]}[pooling]


def build(invoke, tree, sae, *extra):
    result = invoke(
        "controls", "--model", "vit_b_16", "--weights", "none", "--images", tree,
        "--workers", "0", "--sae", sae, *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return result


def test_token_level_saelens_latents_equal_an_independent_computation(
    invoke, isolated_env, small_tree, tmp_path, vit
):
    weights = sae_weights()
    folder = write_saelens(tmp_path / "sae", weights)
    first = build(invoke, small_tree, folder)
    assert f"--layer {HOOK_LAYER}" in first.output  # from the hook name
    stores = isolated_env / "controls" / "vit_b_16"
    for pooling in ("max", "mean", "cls"):
        if pooling != "max":
            build(invoke, small_tree, folder, "--latent-pooling", pooling)
        (directory,) = stores.glob(f"{HOOK_LAYER}@sae-*+latents-{pooling}")
        store = ControlStore(directory)
        assert store.n_units == 64
        assert store.index["identity"]["units"]["latents"] == pooling
        recipe = store.index["preprocessing_recipe"]
        expected = expected_latents(vit, small_tree, weights, pooling, recipe)
        assert torch.allclose(store.image_major(), expected, atol=1e-4), pooling

    single = tmp_path / "sae.safetensors"  # the same SAE as one file: the same values
    save_file({k: v for k, v in weights.items() if k != "W_dec"}, str(single))
    build(invoke, small_tree, single, "--layer", HOOK_LAYER, "--latent-pooling", "max")
    maxed = sorted(stores.glob(f"{HOOK_LAYER}@sae-*+latents-max"))
    assert len(maxed) == 2
    a, b = (ControlStore(d).image_major() for d in maxed)
    assert torch.equal(a, b)


def test_sae_folder_problems_are_one_line_before_anything_runs(
    invoke, isolated_env, small_tree, tmp_path
):
    narrow = write_saelens(tmp_path / "narrow", sae_weights(d_in=32, d_sae=8))
    result = invoke("controls", "--model", "vit_b_16", "--weights", "none", "--images", small_tree,
                    "--workers", "0", "--sae", narrow)  # fmt: skip
    assert result.exit_code == 1
    assert "reads 32 values per token, but the layer's tokens have 768" in result.output
    assert not (isolated_env / "controls" / "vit_b_16").exists()
    lying = write_saelens(tmp_path / "lying", sae_weights(), d_sae=128)
    result = invoke("controls", "--model", "vit_b_16", "--images", small_tree, "--sae", lying)
    assert result.exit_code == 1 and "cfg.json says d_in 768, d_sae 128" in result.output
    odd_hook = write_saelens(tmp_path / "odd", sae_weights(), hook_name="blocks.3.hook_mlp_out")
    result = invoke("controls", "--model", "vit_b_16", "--images", small_tree, "--sae", odd_hook)
    assert result.exit_code == 1 and "cannot map to a layer of vit_b_16" in result.output
    gated = write_saelens(tmp_path / "gated", sae_weights(), architecture="gated")
    result = invoke("controls", "--model", "vit_b_16", "--images", small_tree, "--sae", gated,
                    "--layer", HOOK_LAYER)  # fmt: skip
    assert result.exit_code == 1 and "ReLU, JumpReLU and TopK" in result.output
    plain = invoke("controls", "--model", "vit_b_16", "--images", small_tree,
                   "--latent-pooling", "max")  # fmt: skip
    assert plain.exit_code == 1 and "give --sae too" in plain.output


def test_jumprelu_and_topk_encoders():
    from nacosae.models.sae import SparseAutoencoder

    weights = sae_weights(d_in=8, d_sae=6)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    pre = (x - weights["b_dec"]) @ weights["W_enc"] + weights["b_enc"]
    threshold = torch.full((6,), 0.05)
    jump = SparseAutoencoder(
        None, "", weights["W_enc"], weights["b_enc"], weights["b_dec"], "jumprelu", threshold
    )
    assert torch.allclose(jump.encode(x), torch.relu(pre) * (pre > 0.05))
    topk = SparseAutoencoder(
        None, "", weights["W_enc"], weights["b_enc"], weights["b_dec"], "topk", k=2
    )
    out = topk.encode(x)
    assert ((out > 0).sum(dim=1) <= 2).all()
    kept = torch.relu(pre).topk(2, dim=1)
    assert torch.allclose(out.gather(1, kept.indices), kept.values)


def test_dead_latents_are_recorded_selected_around_and_not_searched(
    invoke, isolated_env, controls, image_tree, t2i_dir, tmp_path
):
    from tests.chatserver import ChatServer
    from tests.test_explain import answers, events_of, explain_args, only_run

    generator = torch.Generator().manual_seed(0)
    b_enc = torch.full((12,), 5.0)
    b_enc[:4] = -1e4  # latents 0-3 never fire; the others always do
    b_enc[4:8] = torch.linspace(-0.2, 0.2, 4)  # these fire on some images only
    sae = tmp_path / "sae.safetensors"
    save_file({"W_enc": torch.randn(32, 12, generator=generator) * 0.1, "b_enc": b_enc}, str(sae))
    result = invoke("controls", "--model", "tiny_cnn", "--images", image_tree, "--workers", "0",
                    "--sae", sae)  # fmt: skip
    assert result.exit_code == 0, result.output
    (directory,) = (isolated_env / "controls" / "tiny_cnn").glob("avgpool@sae-*")
    store = ControlStore(directory)
    rates = store.firing_rates()
    expected = (store.image_major() > 0).float().mean(dim=0)
    assert torch.equal(rates, expected)
    assert store.index["firing"]["dead"] == int((rates == 0).sum()) >= 4
    assert rates[:4].eq(0).all() and rates[8:].eq(1).all()

    from nacosae.search.neurons import parse_spec

    firing = rates.tolist()
    alive = parse_spec("alive:6", 12, 42, firing)
    assert len(set(alive)) == 6 and all(firing[n] > 0 for n in alive)
    assert parse_spec("alive:6", 12, 42, firing) == alive  # seeded
    top = parse_spec("top-firing:4", 12, 42, firing)
    rest = [firing[n] for n in range(12) if n not in top]
    assert min(firing[n] for n in top) >= max(rest) and top == sorted(top)  # ties by id
    live = sum(rate > 0 for rate in firing)
    with pytest.raises(NacosaeError, match=f"only {live} of the 12 latents fire"):
        parse_spec(f"alive:{live + 1}", 12, 42, firing)

    with ChatServer(answers("<answer>blue sky</answer>", "<answer>moss</answer>")) as server:
        args = explain_args(t2i_dir, server, "--neurons", "0,9", "--n-iters", "1", "--sae", sae)
        result = invoke(*args)
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    summary = json.loads((run / "summary.json").read_text())["neurons"]
    assert summary["0"]["best"] is None and "never fires on the control set" in summary["0"]["note"]
    assert summary["9"]["best"] is not None
    assert {e["neuron"] for e in events_of(run)} == {9}  # nothing spent on latent 0
    rows = invoke("report", tmp_path / "runs", "--format", "json")
    note = next(r["note"] for r in json.loads(rows.stdout) if r["neuron"] == 0)
    assert note.startswith("never fires")
    plain = invoke("explain", "--preset", "smoke", "--neurons", "alive:3", "--dry-run")
    assert "give --sae" in plain.output


def test_a_vit_prisma_style_folder_reads_like_saelens(tmp_path):
    from nacosae.models.sae import SparseAutoencoder, folder_hook, hook_layer

    weights = sae_weights(d_in=16, d_sae=32)
    folder = tmp_path / "prisma"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "d_in": 16, "expansion_factor": 2, "hook_point": "blocks.3.hook_resid_post",
        "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4},
    }))  # fmt: skip
    save_file(weights, str(folder / "weights.safetensors"))
    sae = SparseAutoencoder.load(folder)
    assert (sae.d_in, sae.d_sae, sae.activation, sae.k) == (16, 32, "topk", 4)
    assert sae.trained_on_tokens and folder_hook(folder) == "blocks.3.hook_resid_post"
    assert hook_layer(sae.hook_name, "timm:vit_small_patch16_224") == "blocks.3"
    assert hook_layer(sae.hook_name, "hf:facebook/dinov2-small") == "encoder.layer.3"
    assert hook_layer(sae.hook_name, "hf:openai/clip-vit-base-patch32") == (
        "vision_model.encoder.layers.3"
    )
    assert hook_layer(sae.hook_name, "resnet50") is None
