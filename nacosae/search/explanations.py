"""Several concepts per unit (`--explanations K`): a polysemantic unit answers to more than one.

From the unit's scored concepts, best score first, a concept is listed when it is
- significant against the controls: its Mann-Whitney p below 0.05 / m, m the number of distinct
  concepts the unit scored (Bonferroni), and it drives the unit above them (AUC above 0.5);
- distinct from every concept listed before it: sentence-embedding cosine similarity below the
  novelty threshold (0.75, evaluation/novelty.py: below it lie related but different ideas),
until K are listed. The best concept comes first when it is significant; a unit none of whose
concepts is significant lists none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nacosae.evaluation.novelty import DEFAULT_THRESHOLD
from nacosae.search.history import normalise

ALPHA = 0.05


def distinct_explanations(
    events: list[dict[str, Any]],
    k: int,
    embed: Callable[[list[str]], np.ndarray] | None,
    threshold: float = DEFAULT_THRESHOLD,
) -> list[dict[str, Any]]:
    """Up to `k` distinct, significant concepts of one unit's events (see the module
    docstring); `embed` (normalised vectors) is needed only for k > 1."""
    best: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.get("score") is None or not event.get("concept"):
            continue
        key = normalise(event["concept"])
        if key not in best or event["score"] > best[key]["score"]:
            best[key] = event
    ranked = sorted(best.values(), key=lambda e: -e["score"])
    tests = max(len(ranked), 1)
    significant = [
        e
        for e in ranked
        if (e.get("metrics") or {}).get("p", 1.0) < ALPHA / tests
        and (e.get("metrics") or {}).get("auc", 0.0) > 0.5
    ]
    if k > 1 and len(significant) > 1 and embed is None:
        raise ValueError("several explanations need the sentence embedder")
    vectors = embed([e["concept"] for e in significant]) if k > 1 and significant else None
    chosen: list[int] = []
    for index in range(len(significant)):
        if len(chosen) == k:
            break
        if vectors is not None and chosen:
            similarity = float(np.max(vectors[chosen] @ vectors[index]))
            if similarity >= threshold:
                continue
        chosen.append(index)
    return [
        {
            "rank": rank,
            "concept": significant[i]["concept"],
            "score": significant[i]["score"],
            "iteration": significant[i]["iteration"],
            "p": significant[i]["metrics"]["p"],
            "auc": significant[i]["metrics"]["auc"],
        }
        for rank, i in enumerate(chosen, start=1)
    ]
