"""The search's parts on their own: answer parsing, templates, history policy, scoring."""

import random

import numpy as np
import pytest

from nacosae.errors import ConceptParseError, NacosaeError
from nacosae.search.history import History, Scored
from nacosae.search.prompts import MAIN_FIELDS, SUMMARY_FIELDS, load_template, parse_answer
from nacosae.search.scoring import score_all
from nacosae.store.runs import slugify


@pytest.mark.parametrize(
    ("reply", "concept"),
    [
        ("<thinking>round and red</thinking><answer>red apple</answer>", "red apple"),
        ("chatty preamble\n<answer>  Striped   Fabric. </answer> trailing", "Striped Fabric"),
        ("<answer>first</answer> on reflection <answer>ocean horizon</answer>", "ocean horizon"),
        ('<ANSWER>"dog"</ANSWER>', "dog"),
    ],
)
def test_parse_accepts(reply, concept):
    assert parse_answer(reply, set()).concept == concept


def test_parse_keeps_the_reasoning():
    proposal = parse_answer("<thinking> yellow  things </thinking><answer>lemon</answer>", set())
    assert proposal.reasoning == "yellow things"


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        ("red apple", "no <answer>"),
        ("<answer>  </answer>", "empty"),
        ("<answer>a very long red apple</answer>", "has 5 words"),
        ("<answer>Red  APPLE</answer>", "already tried"),
        ("<answer><b>x</b></answer>", "markup"),
    ],
)
def test_parse_rejects(reply, problem):
    with pytest.raises(ConceptParseError, match=problem):
        parse_answer(reply, {"red apple"})


def test_builtin_templates_have_their_fields():
    for name in ("main", "few-shot"):
        text = load_template(name, MAIN_FIELDS).render(concepts="- a: 0.5", forbidden="a")
        assert "- a: 0.5" in text and "<answer>" in text
    assert "Example 4" in load_template("few-shot", MAIN_FIELDS).text
    load_template("summary", SUMMARY_FIELDS)


def test_template_file_missing_or_unknown_fields(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Concepts: {concepts}")
    with pytest.raises(NacosaeError, match=r"lacks \{forbidden\}"):
        load_template(path, MAIN_FIELDS)
    path.write_text("{concepts} {forbidden} {history}")
    with pytest.raises(NacosaeError, match=r"has unknown \{history\}"):
        load_template(path, MAIN_FIELDS)
    with pytest.raises(NacosaeError, match="does not exist"):
        load_template(tmp_path / "absent.txt", MAIN_FIELDS)


def test_history_replaces_the_worst_when_better():
    history = History([Scored("a", 0.9), Scored("b", 0.2), Scored("c", 0.5)])
    replaced = history.add(Scored("d", 0.6), random.Random(0))
    assert replaced == Scored("b", 0.2)
    assert [s.concept for s in history.sorted()] == ["a", "d", "c"]


def test_history_drops_low_scorers_more_often_when_not_better():
    counts = {"a": 0, "b": 0, "c": 0}
    rng = random.Random(1)
    for _ in range(2000):
        history = History([Scored("a", 0.9), Scored("b", 0.3), Scored("c", 0.5)])
        counts[history.add(Scored("new", 0.1), rng).concept] += 1
    assert counts["b"] > counts["c"] > counts["a"]
    assert counts["a"] < 20  # the best member is (almost) never dropped


def test_scores_match_their_definitions():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    control, synthetic = rng.normal(0, 1, 200), rng.normal(2.5, 1, 5)
    metrics = score_all(control, synthetic)
    labels = np.r_[np.zeros(200), np.ones(5)]
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, np.r_[control, synthetic]))
    assert metrics["mad"] == pytest.approx((synthetic.mean() - control.mean()) / control.std())
    assert metrics["mean"] == pytest.approx(synthetic.mean())
    assert metrics["u1"] == pytest.approx((1 - metrics["auc"]) * 200 * 5)
    assert 0 < metrics["p"] < 0.05


def test_mad_is_zero_for_constant_controls_and_ties_count_half():
    metrics = score_all(np.zeros(10), np.zeros(3))
    assert metrics["mad"] == 0.0 and metrics["auc"] == 0.5


def test_slugs_are_safe_and_distinct():
    assert slugify("../../x").startswith("x-")
    assert "/" not in slugify("a/b") and slugify("a/b") != slugify("a b")
    assert slugify("???").startswith("concept-")
