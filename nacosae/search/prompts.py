"""Prompt templates (plain text with `{named}` fields), rendering, and strict answer parsing.

Built-in templates live in the repository's `prompts/` folder (installed as `nacosae/prompts`);
a template can also be any file. Its fields say what it gets:
- the scored concepts, best first: `{concepts}` (one `- concept: 0.912` line each) or
  `{concept_list}` (the original project's form, one line: `concept: 0.912; concept: 0.5;`);
- the concepts it must not propose (main templates): `{forbidden}` (every concept tried, the
  initial classes included) or `{generation_history}` (the original's: the LLM's own proposals);
- optionally `{metric}`: what the scores mean under the metric in use;
- optionally `{reply_format}`: how to answer, in the answer format in use (a template without it
  gets that sentence appended when the format is json);
- optionally `{examples}`: the four worked examples of the chain-of-thought template (`cot`), each
  a scored history and the reasoning that leads to a new concept, written in the answer format in
  use (from `prompts/cot_examples.json`).
So the original project's template files load as they are. An answer reads
`<thinking>...</thinking><answer>...</answer>` (format `tags`) or is the JSON object
`{"reasoning": "...", "concept": "..."}` (format `json`), with a concept of 1-3 words that was not
tried before (compared case- and whitespace-insensitively) and not a fragment of the instructions
("The concept is", "a new concept"): both are re-asked like any other parse error.
"""

from __future__ import annotations

import functools
import json
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nacosae.errors import ConceptParseError, NacosaeError
from nacosae.models import structured
from nacosae.search.history import Scored, normalise
from nacosae.textfiles import read_utf8

TemplateKind = Literal["main", "summary"]
CONCEPT_FIELDS = frozenset({"concepts", "concept_list"})
FORBIDDEN_FIELDS = frozenset({"forbidden", "generation_history"})
OPTIONAL_FIELDS = frozenset({"metric", "reply_format", "examples"})
AnswerFormat = Literal["tags", "json"]
JSON_PLACEHOLDERS = {"reasoning": "<your thinking>", "concept": "<one to three words>"}
TAGS_REPLY = (
    "Think inside <thinking></thinking>, then give only the concept inside <answer></answer>."
)
BUILTIN = {
    "main": "main.txt",
    "summary": "summary.txt",
    "cot": "cot.txt",
    "few-shot": "cot.txt",  # the earlier name of the chain-of-thought template
    "line-main": "line_main.txt",
    "line-summary": "line_summary.txt",
}
COT_EXAMPLES = "cot_examples.json"
MAX_WORDS = 3
# a reply that names the task instead of a concept ("The concept is", "a new concept")
INSTRUCTION_WORDS = frozenset(
    {"concept", "concepts", "answer", "reasoning", "thinking", "example", "examples"}
)
# words that cannot end a concept (an unfinished phrase) nor make one on their own
FUNCTION_WORDS = frozenset((
    "a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "with", "from", "into", "and",
    "or", "but", "is", "are", "was", "were", "be", "been", "being", "this", "that", "these",
    "those", "it", "its", "which", "who", "whom", "whose", "what", "when", "where", "why", "how",
    "as", "than", "then", "so", "not", "no", "my", "your", "our", "their", "his", "her", "new",
    "one", "two", "three", "other", "can", "could", "will", "would", "should", "may", "might",
    "must", "do", "does", "has", "have", "had",
))  # fmt: skip
METRIC_MEANINGS = {
    "auc": (
        "Each score is a ROC-AUC: the chance that one of the concept's images activates the unit "
        "more than an ordinary photo does. 0.5 is chance, 1.0 is perfect, and below 0.5 the "
        "concept makes the unit quieter than ordinary photos."
    ),
    "mad": (
        "Each score is a standardised difference: how many standard deviations of the unit's "
        "activations on ordinary photos the concept's images lie above them. 0 is no effect, "
        "higher is better, and there is no upper limit."
    ),
    "mean": (
        "Each score is the unit's raw mean activation on the concept's images. Higher is "
        "better; the scale is the unit's own, with no fixed maximum."
    ),
    "auprc": (
        "Each score is an average precision: how cleanly the concept's images outrank ordinary "
        "photos in the unit's activation. 1.0 is perfect; a concept no better than ordinary "
        "photos scores about the share of its images among all images compared."
    ),
    "correlation": (
        "Each score is a correlation between the unit's activation and an image being one of "
        "the concept's: 0 is no relation, 1.0 is perfect, negative means the concept makes the "
        "unit quieter than ordinary photos."
    ),
}


def prompts_dir() -> Path:
    """The packaged templates (wheel) or the repository's prompts/ folder (source tree)."""
    packaged = Path(__file__).resolve().parents[1] / "prompts"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "prompts"


@dataclass(frozen=True)
class PromptValues:
    """Everything a template may ask for (see the module docstring)."""

    scored: list[Scored]  # best first
    tried: list[str]  # every concept scored so far, in order
    proposed: list[str]  # the LLM's own earlier proposals, in order
    metric: str
    answer_format: AnswerFormat = "tags"

    def fields(self) -> dict[str, str]:
        return {
            "concepts": "\n".join(f"- {s.concept}: {s.score:.3f}" for s in self.scored),
            "concept_list": "; ".join(f"{s.concept}: {s.score}" for s in self.scored) + ";",
            "forbidden": ", ".join(self.tried),
            "generation_history": ", ".join(self.proposed),
            "metric": METRIC_MEANINGS[self.metric],
            "reply_format": reply_format(self.answer_format),
            "examples": worked_examples(self.answer_format, structured.ANSWER_FIELDS),
        }


def reply_format(answer_format: AnswerFormat) -> str:
    """The sentence that says how to answer, in the answer format (JSON fields in the order
    the grammar imposes)."""
    if answer_format == "tags":
        return TAGS_REPLY
    fields = {f: JSON_PLACEHOLDERS[f] for f in structured.ANSWER_FIELDS}
    return f"Reply with one JSON object: {json.dumps(fields)}."


@functools.cache
def _cot_examples() -> list[dict]:
    return json.loads((prompts_dir() / COT_EXAMPLES).read_text(encoding="utf-8"))


@functools.cache
def worked_examples(answer_format: AnswerFormat, fields: tuple[str, ...]) -> str:
    """The chain-of-thought template's worked examples, each answer written in `answer_format`
    (JSON with its `fields` in that order)."""
    blocks = []
    for number, example in enumerate(_cot_examples(), 1):
        scored = ", ".join(f"{concept} {score:.2f}" for concept, score in example["scored"])
        if answer_format == "json":
            answer = {f: example[f] for f in fields}
            reply = json.dumps(answer, separators=structured.SEPARATORS)
        else:
            thinking, concept = example["reasoning"], example["concept"]
            reply = f"<thinking>{thinking}</thinking>\n<answer>{concept}</answer>"
        blocks.append(
            f"Example {number}\nScored concepts: {scored}\n"
            f"Already tried: {', '.join(example['tried'])}\n{reply}"
        )
    return "\n\n".join(blocks)


@dataclass(frozen=True)
class Template:
    name: str
    text: str

    @functools.cached_property
    def example_answers(self) -> frozenset[str]:
        """The worked examples' concepts, when the template shows them: a small model copies
        them, and a copy says nothing about the unit."""
        if "{examples}" not in self.text:
            return frozenset()
        return frozenset(normalise(e["concept"]) for e in _cot_examples())

    def render(self, values: PromptValues) -> str:
        text = self.text.format(**values.fields()).strip()
        if values.answer_format == "json" and "{reply_format}" not in self.text:
            text += "\n\n" + reply_format("json")
        return text


def load_template(choice: str | Path, kind: TemplateKind) -> Template:
    """A built-in name (main, summary, cot, line-main, line-summary) or a file; checks that its
    fields suit a `kind` template."""
    path = prompts_dir() / BUILTIN[str(choice)] if str(choice) in BUILTIN else Path(choice)
    if not path.is_file():
        builtin = ", ".join(n for n in BUILTIN if (kind == "summary") == ("summary" in n))
        raise NacosaeError(
            f"prompt template {path} does not exist: give a file or one of {builtin}"
        )
    text = read_utf8(path, "prompt template")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise NacosaeError(
            f"prompt template {path} is malformed ({exc}); write literal braces as {{{{ }}}}"
        ) from exc
    problems = []
    if not fields & CONCEPT_FIELDS:
        problems.append("lacks {concepts} (or {concept_list})")
    if kind == "main" and not fields & FORBIDDEN_FIELDS:
        problems.append("lacks {forbidden} (or {generation_history})")
    unknown = fields - CONCEPT_FIELDS - FORBIDDEN_FIELDS - OPTIONAL_FIELDS
    if unknown:
        problems.append("has unknown " + ", ".join(f"{{{f}}}" for f in sorted(unknown)))
    if problems:
        raise NacosaeError(
            f"{kind} prompt template {path} {' and '.join(problems)}: the fields are "
            "{concepts} or {concept_list}, "
            + ("{forbidden} or {generation_history}, " if kind == "main" else "")
            + "and optionally {metric}, {reply_format} and {examples}"
        )
    return Template(path.name, text)


ANSWER = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
THINKING = re.compile(r"<thinking>(.*?)</thinking>", re.IGNORECASE | re.DOTALL)
STRIP = " \t\n\"'`*.,;:!?()[]{}"


@dataclass(frozen=True)
class Proposal:
    concept: str
    reasoning: str


ANSWER_PARSING = ("strict", "original")


def parse_answer(
    text: str,
    tried: set[str],
    answer_format: AnswerFormat = "tags",
    example_answers: frozenset[str] = frozenset(),
    parsing: str = "strict",
) -> Proposal:
    """The proposed concept, or ConceptParseError saying what was wrong (fed back to the LLM).
    `example_answers` are the prompt's worked examples' concepts (Template.example_answers);
    a concept in `tried` is refused (pass an empty set to allow repeats). `parsing` "original"
    reads a reply as the original project did: the first answer block, its closing tag
    optional, no word limit and no fragment checks; only an empty answer is refused."""
    if parsing == "original":
        return _parse_original(text, tried, answer_format)
    if answer_format == "json":
        concept, reasoning = _read_json_answer(text)
    else:
        concept, reasoning = _read_tagged_answer(text)
    concept = " ".join(concept.split()).strip(STRIP)
    if not concept:
        raise ConceptParseError("the concept is empty; give one concept of one to three words")
    words = concept.split()
    if len(words) > MAX_WORDS:
        raise ConceptParseError(
            f"the answer '{concept}' has {len(words)} words; give one to three words"
        )
    if "<" in concept or ">" in concept:
        raise ConceptParseError("the answer contains markup; give only the concept's words")
    _check_not_a_fragment(concept)
    _check_not_tried(concept, tried)
    if normalise(concept) in example_answers:
        raise ConceptParseError(
            f"'{concept}' is the answer of a worked example; propose a concept for this unit"
        )
    return Proposal(concept=concept, reasoning=" ".join(reasoning.split()))


def _parse_original(text: str, tried: set[str], answer_format: AnswerFormat) -> Proposal:
    """The original's reading: text after the first <answer> up to the first </answer> (or
    the end), reasoning from the first <thinking> block. Where the original crashed (no
    <answer> at all) the reply is re-asked."""
    if answer_format == "json":
        concept, reasoning = _read_json_answer(text)
    else:
        opened = re.search(r"<answer>", text, re.IGNORECASE)
        if opened is None:
            raise ConceptParseError(
                "the reply has no <answer>; give the concept inside <answer></answer>"
            )
        concept = re.split(r"</answer>", text[opened.end() :], maxsplit=1, flags=re.IGNORECASE)[0]
        thinking = re.search(r"<thinking>(.*?)(?:</thinking>|$)", text, re.IGNORECASE | re.DOTALL)
        reasoning = thinking.group(1) if thinking else ""
    concept = concept.strip()
    if not concept:
        raise ConceptParseError("the concept is empty; give the concept inside <answer></answer>")
    _check_not_tried(concept, tried)
    return Proposal(concept=concept, reasoning=reasoning.strip())


def _check_not_tried(concept: str, tried: set[str]) -> None:
    if normalise(concept) in tried:
        raise ConceptParseError(f"'{concept}' was already tried; propose a different concept")


def re_ask(chat: list[dict[str, str]], reply: str, problem: Exception) -> list[dict[str, str]]:
    """The chat continued with the unusable reply and the problem stated: the next request."""
    again = f"That answer cannot be used: {problem}. Try again."
    return [*chat, {"role": "assistant", "content": reply}, {"role": "user", "content": again}]


def _check_not_a_fragment(concept: str) -> None:
    """Small models copy the instructions ("The concept is"), stop mid-phrase or stutter
    ("kite kite"); none of these names anything to photograph."""
    words = [w.strip("'-").lower() for w in concept.split()]
    if INSTRUCTION_WORDS & set(words):
        raise ConceptParseError(
            f"'{concept}' repeats the instructions; give the concept itself, such as 'red apple'"
        )
    if len(set(words)) < len(words):
        raise ConceptParseError(f"'{concept}' repeats a word; give the concept once")
    if words[-1] in FUNCTION_WORDS:
        raise ConceptParseError(
            f"'{concept}' is an unfinished phrase; give a complete concept of one to three words"
        )


def _read_tagged_answer(text: str) -> tuple[str, str]:
    answers = ANSWER.findall(text)
    if not answers:
        raise ConceptParseError(
            "the reply has no <answer>...</answer>; give the concept inside <answer></answer>"
        )
    thinking = THINKING.findall(text)
    return answers[-1], thinking[-1] if thinking else ""


def _read_json_answer(text: str) -> tuple[str, str]:
    start, end = text.find("{"), text.rfind("}")
    try:
        answer = json.loads(text[start : end + 1]) if 0 <= start < end else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("concept"), str):
        raise ConceptParseError(
            'the reply is not a JSON object with a "concept"; reply with {"reasoning": "...", '
            '"concept": "..."}'
        )
    reasoning = answer.get("reasoning")
    return answer["concept"], reasoning if isinstance(reasoning, str) else ""
