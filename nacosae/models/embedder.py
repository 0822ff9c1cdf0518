"""The sentence embedder: text similarity for the dissimilar-class controls and for novelty."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacosae import hub

if TYPE_CHECKING:
    import numpy as np

    from nacosae.models.cache import ModelHandle, ModelSpec


def load_embedder(spec: ModelSpec) -> Any:
    """ModelCache loader for kind 'embedder' (a sentence-transformers id or local folder)."""
    from sentence_transformers import SentenceTransformer

    from nacosae import progress

    progress.calm_libraries()
    try:
        if Path(spec.id).is_dir():
            return SentenceTransformer(spec.id, device="cpu")
        return SentenceTransformer(
            spec.id, device="cpu", cache_folder=hub.cache_dir(), local_files_only=hub.offline()
        )
    except Exception as exc:  # noqa: BLE001 - every loading failure becomes one clear line
        raise hub.HubError(
            f"cannot load the sentence embedder {spec.id}: run `nacosae download models "
            f"--embedder {spec.id}` with network access first"
        ) from exc


def embedding_function(embedder: ModelHandle) -> Callable[[list[str]], np.ndarray]:
    """Texts -> unit-length sentence embeddings, the embedder taken from the cache per call."""
    import numpy as np

    def embed(texts: list[str]) -> np.ndarray:
        with embedder.use() as model:
            vectors = model.encode(texts, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float64)

    return embed
