"""How new the found concepts are: the share that no entry of a vocabulary matches.

A concept matches a vocabulary entry when the cosine similarity of their sentence embeddings
(all-MiniLM-L6-v2 by default, the embedder the control selection uses) is at least the threshold.
The default 0.75 lies between MiniLM's paraphrases and its related-but-different pairs, measured:
"fire truck" ~ "fire engine" 0.778, "teapot" ~ "tea kettle" 0.777, "golden retriever" ~
"retriever dog" 0.780, "sports car" ~ "racing car" 0.785 are above it; "cabinet" ~ "china
cabinet" 0.717, "car" ~ "truck" 0.689, "dog" ~ "cat" 0.661 are below. So a concept counts as new
unless the vocabulary holds essentially the same idea.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nacosae.errors import NacosaeError
from nacosae.textfiles import read_utf8

DEFAULT_THRESHOLD = 0.75


@dataclass(frozen=True)
class NoveltyRow:
    neuron: int
    concept: str
    nearest: str
    similarity: float
    novel: bool


def read_vocabulary(path: Path | None) -> tuple[list[str], str]:
    """One concept a line (blank lines and `#` comments skipped); default: the packaged
    ImageNet-1k class names."""
    if path is None:
        from nacosae.data.imagenet import imagenet_classes

        return [c.concept for c in imagenet_classes()], "ImageNet-1k class names"
    path = Path(path).expanduser()
    if not path.is_file():
        raise NacosaeError(f"vocabulary file {path} does not exist (one concept a line)")
    entries = [
        line.strip()
        for line in read_utf8(path, "vocabulary file").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not entries:
        raise NacosaeError(f"vocabulary file {path} is empty (one concept a line)")
    return list(dict.fromkeys(entries)), path.name


def novelty(
    concepts: list[tuple[int, str]],
    vocabulary: list[str],
    embed: Callable[[list[str]], Any],
    threshold: float = DEFAULT_THRESHOLD,
) -> list[NoveltyRow]:
    """Each (neuron, concept) with its nearest vocabulary entry; `embed(texts)` gives unit-norm
    vectors."""
    import numpy as np

    if not 0.0 < threshold <= 1.0:
        raise NacosaeError("--threshold must be in (0, 1]")
    texts = [c for _, c in concepts]
    similarity = np.asarray(embed(texts)) @ np.asarray(embed(vocabulary)).T
    rows = []
    for (neuron, concept), sims in zip(concepts, similarity, strict=True):
        best = int(np.argmax(sims))
        nearest, score = vocabulary[best], float(sims[best])
        rows.append(NoveltyRow(neuron, concept, nearest, score, score < threshold))
    return rows


def to_csv(rows: list[NoveltyRow]) -> str:
    import csv
    import io
    from dataclasses import asdict

    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=list(NoveltyRow.__dataclass_fields__), lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    return buffer.getvalue()
