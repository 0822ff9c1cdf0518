"""`nacosae download models`: fetch every model a run needs into the standard caches.

Hugging Face models go into the HF cache (HF_HOME) with only the files their loaders read:
safetensors weights (fp16 variants for diffusers components when the repo has them), configs,
tokenizers and chat templates, never the duplicate `.bin`/`.ckpt`/ONNX/Flax copies. The
explained model's weights go into the torch hub cache. After this, loaders work with
HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nacosae import hub

DEFAULT_LANGUAGE_MODEL = "meta-llama/Llama-3.2-1B-Instruct"
DEFAULT_T2I_MODEL = "stabilityai/sd-turbo"
DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_VISION_MODEL = "resnet18"

TRANSFORMERS_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.txt")
TRANSFORMERS_IGNORE = ("original/*", "onnx/*", "openvino/*", "*.gguf")
EMBEDDER_PATTERNS = ("*.json", "*.safetensors", "*.txt", "1_Pooling/*", "*.model")
EMBEDDER_IGNORE = ("onnx/*", "openvino/*")
CONFIG_SUFFIXES = (".json", ".txt", ".model", ".jinja")


@dataclass
class CachedModel:
    kind: str
    id: str
    path: Path
    files: int
    bytes: int


def diffusers_files(repo_files: list[str]) -> list[str]:
    """The files a diffusers pipeline loads: configs and tokenizers, plus per component the fp16
    safetensors if the repo has them, else the plain safetensors. Root-level single-file
    checkpoints and other weight formats are left out."""
    chosen = [f for f in repo_files if f.endswith(CONFIG_SUFFIXES) and not f.startswith(".")]
    by_component: dict[str, list[str]] = {}
    for f in repo_files:
        path = PurePosixPath(f)
        if path.suffix == ".safetensors" and len(path.parts) == 2:
            by_component.setdefault(path.parts[0], []).append(f)
    for files in by_component.values():
        fp16 = [f for f in files if f.endswith(".fp16.safetensors")]
        chosen.extend(fp16 or [f for f in files if f.count(".") == 1])
    return sorted(set(chosen) - {"README.md"})


def _summarise(kind: str, repo_id: str, path: Path) -> CachedModel:
    files = [p for p in path.rglob("*") if p.is_file()]
    return CachedModel(kind, repo_id, path, len(files), sum(p.stat().st_size for p in files))


def fetch_language_model(repo_id: str, token: str | None) -> CachedModel:
    path = hub.snapshot(
        repo_id,
        token=token,
        allow_patterns=TRANSFORMERS_PATTERNS,
        ignore_patterns=TRANSFORMERS_IGNORE,
    )
    return _summarise("language model", repo_id, path)


def fetch_t2i_model(repo_id: str, token: str | None) -> CachedModel:
    listed = hub.cached_files(repo_id) if hub.offline() else hub.list_files(repo_id, token=token)
    wanted = diffusers_files(listed)
    if "model_index.json" not in wanted:
        raise hub.HubError(f"{repo_id} is not a diffusers pipeline (it has no model_index.json)")
    path = hub.snapshot(repo_id, token=token, allow_patterns=wanted)
    return _summarise("text-to-image", repo_id, path)


def fetch_embedder(repo_id: str, token: str | None) -> CachedModel:
    path = hub.snapshot(
        repo_id, token=token, allow_patterns=EMBEDDER_PATTERNS, ignore_patterns=EMBEDDER_IGNORE
    )
    return _summarise("embedder", repo_id, path)


def fetch_vision_model(name: str) -> CachedModel:
    from nacosae.models.vision import default_weights_file

    path = default_weights_file(name)
    if path is None:
        return CachedModel("explained model", name, Path("-"), 0, 0)
    return CachedModel("explained model", name, path, 1, path.stat().st_size)
