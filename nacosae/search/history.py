"""The scored concept history that the LLM sees, and how a new concept enters it.

A new concept replaces the worst member when it scores better; otherwise it replaces a member
drawn at random with weights towards low scores (so a weak concept rarely displaces a strong
one, but the list keeps changing). All draws come from the caller's seeded RNG.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Scored:
    concept: str
    score: float


def normalise(concept: str) -> str:
    """The form used to compare concepts: lower case, single spaces."""
    return " ".join(concept.lower().split())


class History:
    def __init__(self, initial: list[Scored]) -> None:
        self.members: list[Scored] = list(initial)

    def sorted(self) -> list[Scored]:
        """Best first; ties keep insertion order."""
        return sorted(self.members, key=lambda s: -s.score)

    def top(self, k: int) -> list[Scored]:
        return self.sorted()[:k]

    def add(self, new: Scored, rng: random.Random) -> Scored | None:
        """Insert `new`; returns the member it replaced."""
        if not self.members:
            self.members.append(new)
            return None
        worst_index = min(range(len(self.members)), key=lambda i: self.members[i].score)
        if new.score > self.members[worst_index].score:
            victim = worst_index
        else:
            best = max(m.score for m in self.members)
            weights = [best - m.score + 1e-6 for m in self.members]
            victim = rng.choices(range(len(self.members)), weights=weights, k=1)[0]
        replaced = self.members[victim]
        self.members[victim] = new
        return replaced
