"""Prompt templates (plain text with `{named}` fields), rendering, and strict answer parsing.

Templates live in the repository's `prompts/` folder (installed as `nacosae/prompts`). A main
template needs `{concepts}` and `{forbidden}`; a summary template needs `{concepts}`. An answer
must read `<thinking>...</thinking><answer>...</answer>` with 1-3 words in the answer that were
not tried before (compared case- and whitespace-insensitively).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

from nacosae.errors import ConceptParseError, NacosaeError
from nacosae.search.history import Scored, normalise

MAIN_FIELDS = frozenset({"concepts", "forbidden"})
SUMMARY_FIELDS = frozenset({"concepts"})
BUILTIN = {"main": "main.txt", "summary": "summary.txt", "few-shot": "few_shot_cot.txt"}
MAX_WORDS = 3


def prompts_dir() -> Path:
    """The packaged templates (wheel) or the repository's prompts/ folder (source tree)."""
    packaged = Path(__file__).resolve().parents[1] / "prompts"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "prompts"


@dataclass(frozen=True)
class Template:
    name: str
    text: str

    def render(self, **fields: str) -> str:
        return self.text.format(**fields)


def load_template(choice: str | Path, required: frozenset[str]) -> Template:
    """A built-in name (main, summary, few-shot) or a file; checks its fields."""
    path = prompts_dir() / BUILTIN[str(choice)] if str(choice) in BUILTIN else Path(choice)
    if not path.is_file():
        raise NacosaeError(f"prompt template {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise NacosaeError(
            f"prompt template {path} is malformed ({exc}); write literal braces as {{{{ }}}}"
        ) from exc
    missing, unknown = required - fields, fields - required
    if missing or unknown:
        problems = []
        if missing:
            problems.append("lacks " + ", ".join(f"{{{f}}}" for f in sorted(missing)))
        if unknown:
            problems.append("has unknown " + ", ".join(f"{{{f}}}" for f in sorted(unknown)))
        raise NacosaeError(
            f"prompt template {path} {' and '.join(problems)}: it must use exactly "
            + ", ".join(f"{{{f}}}" for f in sorted(required))
        )
    return Template(path.name, text)


def format_concepts(scored: list[Scored]) -> str:
    """One line per concept, best first: '- red apple: 0.912'."""
    return "\n".join(f"- {s.concept}: {s.score:.3f}" for s in scored)


def format_forbidden(tried: list[str]) -> str:
    return ", ".join(tried)


ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
THINKING = re.compile(r"<thinking>(.*?)</thinking>", re.IGNORECASE | re.DOTALL)
STRIP = " \t\n\"'`*.,;:!?()[]{}"


@dataclass(frozen=True)
class Proposal:
    concept: str
    reasoning: str


def parse_answer(text: str, tried: set[str]) -> Proposal:
    """The proposed concept, or ConceptParseError saying what was wrong (fed back to the LLM)."""
    answers = ANSWER.findall(text)
    if not answers:
        raise ConceptParseError(
            "the reply has no <answer>...</answer>; give the concept inside <answer></answer>"
        )
    concept = " ".join(answers[-1].split()).strip(STRIP)
    if not concept:
        raise ConceptParseError("the <answer> is empty; give one concept of one to three words")
    words = concept.split()
    if len(words) > MAX_WORDS:
        raise ConceptParseError(
            f"the answer '{concept}' has {len(words)} words; give one to three words"
        )
    if "<" in concept or ">" in concept:
        raise ConceptParseError("the answer contains markup; give only the concept's words")
    if normalise(concept) in tried:
        raise ConceptParseError(f"'{concept}' was already tried; propose a different concept")
    thinking = THINKING.findall(text)
    return Proposal(concept=concept, reasoning=" ".join(thinking[-1].split()) if thinking else "")
