"""The scored concept history that the LLM sees, and how a new concept enters it.

A new concept takes the worst member's place when it scores better; otherwise it takes the
place of a member drawn at random with weights towards low scores (so a weak concept rarely
displaces a strong one, but the list keeps changing). All draws come from the caller's seeded
RNG. Two orders of doing that (`--history-update`):
- replace (default): the new concept takes the victim's slot; weights are best - score + 1e-6,
  so a history of equal scores still draws;
- original (the original project's `update_concept_history`): the victim is deleted and the new
  concept appended at the end, weights best - score (the best member is never drawn), and a
  concept already in the history gets the new score in its old place. Where every weight is 0
  (all scores equal) the original raised an error; here the victim is drawn uniformly.
Either way a concept already in the history (with `--repeats rescore`) keeps one entry: with
replace its score is updated in place and nothing is evicted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

HISTORY_UPDATES = ("replace", "original")


@dataclass(frozen=True)
class Scored:
    concept: str
    score: float


def normalise(concept: str) -> str:
    """The form used to compare concepts: lower case, single spaces."""
    return " ".join(concept.lower().split())


class History:
    def __init__(self, initial: list[Scored], update: str = "replace") -> None:
        self.members: list[Scored] = list(initial)
        self.update = update

    def sorted(self) -> list[Scored]:
        """Best first; ties keep insertion order."""
        return sorted(self.members, key=lambda s: -s.score)

    def top(self, k: int) -> list[Scored]:
        return self.sorted()[:k]

    def add(self, new: Scored, rng: random.Random) -> Scored | None:
        """Insert `new`; returns the member it evicted (None when none was)."""
        if not self.members:
            self.members.append(new)
            return None
        present = self._index_of(new.concept)
        if self.update == "replace" and present is not None:
            self.members[present] = new
            return None
        victim = self._victim(new.score, rng, epsilon=1e-6 if self.update == "replace" else 0.0)
        replaced = self.members[victim]
        if self.update == "replace":
            self.members[victim] = new
            return replaced
        del self.members[victim]
        present = self._index_of(new.concept)
        if present is not None:
            self.members[present] = new
        else:
            self.members.append(new)
        return replaced

    def _index_of(self, concept: str) -> int | None:
        key = normalise(concept)
        return next((i for i, m in enumerate(self.members) if normalise(m.concept) == key), None)

    def _victim(self, score: float, rng: random.Random, epsilon: float) -> int:
        worst = min(range(len(self.members)), key=lambda i: self.members[i].score)
        if score > self.members[worst].score:
            return worst
        best = max(m.score for m in self.members)
        weights = [best - m.score + epsilon for m in self.members]
        if sum(weights) <= 0:
            return rng.randrange(len(self.members))
        return rng.choices(range(len(self.members)), weights=weights, k=1)[0]
