"""Which control activations a concept is compared against.

- full (default, as in CoSy): every control image of the unit.
- dissimilar-class (the original behaviour): one control class, drawn with probability
  proportional to 1 - cosine similarity between its name and the concept (sentence embedder),
  so the comparison is against something the concept is not.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STRATEGIES = ("full", "dissimilar-class")
# what a control class is called as a concept: nacosae's unambiguous names, or the original
# project's (its folder names with "_" as a space: "crane" and "crane2", "cardigan")
CLASS_NAMES = ("ours", "original")


def stored_class_concept(control_class: dict[str, Any]) -> str:
    """The words used for a control class of a store (stores written before concept names were
    recorded get them from the label and WordNet id)."""
    from nacosae.data.images import class_concept as from_parts

    return from_parts(
        control_class["label"], control_class.get("wnid"), control_class.get("concept")
    )


def class_concepts(classes: list[dict[str, Any]], names: str = "ours") -> list[str]:
    """Each control class as the search names it: initial concepts, what the LLM reads and
    what the dissimilar-class draw embeds. `original` falls back to the folder label (`_` as a
    space) for classes that are not ImageNet's."""
    from nacosae.data.imagenet import original_concept_for_wnid

    if names == "ours":
        return [stored_class_concept(c) for c in classes]
    return [
        original_concept_for_wnid(c.get("wnid")) or c["label"].replace("_", " ") for c in classes
    ]


@dataclass
class ControlSelector:
    unit_activations: Any  # callable: neuron -> np.ndarray [images]
    classes: list[dict[str, Any]]
    strategy: str = "full"
    embed: Any = None  # callable: list[str] -> np.ndarray [n, d] (normalised)
    names: list[str] | None = None  # the classes as concepts (None: class_concepts' own)
    _class_vectors: np.ndarray | None = field(default=None, init=False, repr=False)

    def select(
        self, neuron: int, concept: str, rng: random.Random
    ) -> tuple[np.ndarray, dict[str, Any]]:
        values = self.unit_activations(neuron)
        if self.strategy == "full":
            return values, {"strategy": "full", "images": int(len(values))}
        if self._class_vectors is None:
            self._class_vectors = self.embed(self.names or class_concepts(self.classes))
        similarity = self._class_vectors @ self.embed([concept])[0]
        weights = np.clip(1.0 - similarity, 0.0, None)
        nonempty = np.array([c["rows"][1] > c["rows"][0] for c in self.classes])
        weights = np.where(nonempty, weights, 0.0)
        if weights.sum() <= 0:
            weights = nonempty.astype(float)
        chosen = rng.choices(range(len(self.classes)), weights=weights.tolist(), k=1)[0]
        start, stop = self.classes[chosen]["rows"]
        info = {
            "strategy": "dissimilar-class",
            "class": self.classes[chosen]["label"],
            "similarity": round(float(similarity[chosen]), 6),
            "images": int(stop - start),
        }
        return values[start:stop], info
