"""The search's parts on their own: answer parsing, templates, history policy, scoring."""

import contextlib
import random

import numpy as np
import pytest

from nacosae.errors import ConceptParseError, NacosaeError
from nacosae.search.history import History, Scored
from nacosae.search.prompts import PromptValues, load_template, parse_answer
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


VALUES = dict(
    scored=[Scored("red apple", 0.9125), Scored("dog", 0.5)],
    tried=["tench", "dog", "red apple"],
    proposed=["red apple"],
)


@pytest.mark.parametrize("name", ["main", "cot", "line-main", "summary", "line-summary"])
@pytest.mark.parametrize("metric", ["auc", "mad", "mean", "auprc", "correlation"])
def test_builtin_templates_describe_the_metric_in_use(name, metric):
    kind = "summary" if "summary" in name else "main"
    text = load_template(name, kind).render(PromptValues(**VALUES, metric=metric))
    assert "<answer>" in text and "red apple" in text and "{" not in text
    meaning = {
        "auc": "0.5 is chance",
        "mad": "standard deviations",
        "mean": "raw mean",
        "auprc": "average precision",
        "correlation": "0 is no relation",
    }
    assert meaning[metric] in text
    if metric != "auc":
        assert "0.5 is chance" not in text
    if metric in ("mad", "mean"):
        assert "1.0 is perfect" not in text


def test_the_two_forms_of_concept_list_and_forbidden_list():
    line = load_template("line-main", "main").render(PromptValues(**VALUES, metric="auc"))
    assert "red apple: 0.9125; dog: 0.5;\nForbidden concepts:\nred apple\n" in line
    ours = load_template("main", "main").render(PromptValues(**VALUES, metric="auc"))
    assert "- red apple: 0.912\n- dog: 0.500" in ours and "tench, dog, red apple" in ours


def test_template_files_with_either_field_names(tmp_path):
    """Templates written for the original project ({concept_list}, {generation_history}) load
    as they are; anything else is named in the error."""
    path = tmp_path / "prompt_main.txt"
    path.write_text("List:\n{concept_list}\nNot allowed:\n{generation_history}\nGo.")
    rendered = load_template(path, "main").render(PromptValues(**VALUES, metric="auc"))
    assert rendered == "List:\nred apple: 0.9125; dog: 0.5;\nNot allowed:\nred apple\nGo."
    path.write_text("{concept_list}")
    load_template(path, "summary")
    with pytest.raises(NacosaeError, match=r"lacks \{forbidden\} \(or \{generation_history\}\)"):
        load_template(path, "main")
    path.write_text("{concepts} {forbidden} {history}")
    with pytest.raises(NacosaeError, match=r"has unknown \{history\}"):
        load_template(path, "main")
    with pytest.raises(
        NacosaeError, match="does not exist: give a file or one of main, cot, few-shot"
    ):
        load_template(tmp_path / "absent.txt", "main")


def test_line_image_prompts_and_noise_follow_the_original():
    import torch

    from nacosae.models.text2image import (
        LINE_ANGLES,
        LINE_LIGHTINGS,
        image_generator,
        image_prompt,
    )

    prompts = {image_prompt("red apple", 42, k, "line") for k in range(5)}
    assert len(prompts) == 1  # one draw per concept
    (prompt,) = prompts
    prefix, angle, lighting = prompt.split(", ")
    assert prefix == "A realstic photo of a red apple"
    assert angle in LINE_ANGLES and lighting in LINE_LIGHTINGS
    assert len({image_prompt("red apple", 42, k) for k in range(5)}) > 1  # ours: per image
    noise = image_generator("red apple", 42, 3, "index", "cpu")
    assert noise.device.type == "cpu"
    assert torch.equal(
        torch.randn(4, generator=noise), torch.randn(4, generator=torch.manual_seed(3))
    )
    assert noise.initial_seed() == image_generator("dog", 7, 3, "index", "cpu").initial_seed()


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


@pytest.mark.parametrize(
    ("reply", "concept", "reasoning"),
    [
        ("<thinking>it is red</thinking><answer>a very shiny red apple", "a very shiny red apple",
         "it is red"),  # no closing tag, five words: the original kept it
        ("<answer>first one</answer> then <answer>second</answer>", "first one", ""),
        ("<thinking>open <answer>The concept is</answer>", "The concept is",
         "open <answer>The concept is</answer>"),  # the original's split keeps the rest
    ],
)  # fmt: skip
def test_original_parsing_reads_the_first_answer_as_it_stands(reply, concept, reasoning):
    proposal = parse_answer(reply, set(), "tags", parsing="original")
    assert (proposal.concept, proposal.reasoning) == (concept, reasoning)
    with contextlib.suppress(ConceptParseError):  # strict: refused, or another answer read
        assert parse_answer(reply, set(), "tags").concept != concept


def test_original_parsing_refuses_what_the_original_crashed_on():
    with pytest.raises(ConceptParseError, match="no <answer>"):
        parse_answer("just words", set(), "tags", parsing="original")
    with pytest.raises(ConceptParseError, match="empty"):
        parse_answer("<answer> </answer>", set(), "tags", parsing="original")


def test_original_history_update_deletes_the_victim_and_appends():
    history = History([Scored("a", 0.9), Scored("b", 0.2), Scored("c", 0.5)], "original")
    assert history.add(Scored("d", 0.6), random.Random(0)) == Scored("b", 0.2)
    assert [s.concept for s in history.members] == ["a", "c", "d"]  # appended at the end
    replace = History([Scored("a", 0.9), Scored("b", 0.2), Scored("c", 0.5)])
    replace.add(Scored("d", 0.6), random.Random(0))
    assert [s.concept for s in replace.members] == ["a", "d", "c"]  # in the victim's slot


def test_original_history_never_draws_the_best_and_survives_equal_scores():
    rng = random.Random(3)
    for _ in range(500):
        history = History([Scored("a", 0.9), Scored("b", 0.3), Scored("c", 0.5)], "original")
        assert history.add(Scored("new", 0.1), rng).concept != "a"  # weight max - max = 0
    equal = History([Scored("a", 0.5), Scored("b", 0.5)], "original")
    assert equal.add(Scored("c", 0.5), rng) is not None  # the original raised here
    assert len(equal.members) == 2


def test_a_rescored_concept_keeps_one_entry_with_its_new_score():
    rng = random.Random(0)
    original = History([Scored("a", 0.9), Scored("b", 0.2), Scored("c", 0.5)], "original")
    original.add(Scored("C", 0.95), rng)  # better than the worst: b is deleted, c rescored
    assert original.members == [Scored("a", 0.9), Scored("C", 0.95)]
    replace = History([Scored("a", 0.9), Scored("b", 0.2), Scored("c", 0.5)])
    assert replace.add(Scored("c", 0.1), rng) is None  # rescored in place, nothing evicted
    assert replace.members == [Scored("a", 0.9), Scored("b", 0.2), Scored("c", 0.1)]


def test_top_k_sampling_keeps_only_the_k_most_likely_tokens():
    import torch

    from nacosae.models.language import row_sampler

    scores = torch.tensor([[0.0, 3.0, 2.9, 2.8, -1.0]]).repeat(64, 1)
    picked = set()
    for seed in range(64):
        sampler = row_sampler([seed], temperature=5.0, top_p=1.0, top_k=2)
        picked |= set(sampler(None, scores[:1]).argmax(dim=-1).tolist())
    assert picked == {1, 2}
    wide = {
        row_sampler([s], temperature=5.0, top_p=1.0)(None, scores[:1]).argmax().item()
        for s in range(64)
    }
    assert len(wide) > 2


def test_original_class_names_follow_its_folders():
    from nacosae.data.imagenet import original_concept_for_wnid, original_folders
    from nacosae.search.controls import class_concepts

    folders = original_folders()
    assert len(set(folders.values())) == 1000
    assert folders["n03126707"] == "crane2" and folders["n02012849"] == "crane"
    assert folders["n02113186"] == "cardigan_welsh_corgi" and folders["n02963159"] == "cardigan"
    assert folders["n03710721"] == "tank_suit" and folders["n01440764"] == "tench"
    assert original_concept_for_wnid("n03126707") == "crane2"
    classes = [{"label": "n02113186", "wnid": "n02113186"}, {"label": "red_things"}]
    assert class_concepts(classes, "original") == ["cardigan welsh corgi", "red things"]
    assert class_concepts(classes) == ["cardigan welsh corgi", "red things"]
    assert class_concepts([{"label": "n02963159", "wnid": "n02963159"}]) == ["cardigan sweater"]


def test_scores_match_their_definitions():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    control, synthetic = rng.normal(0, 1, 200), rng.normal(2.5, 1, 5)
    metrics = score_all(control, synthetic)
    labels = np.r_[np.zeros(200), np.ones(5)]
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, np.r_[control, synthetic]))
    sample_std = control.std(ddof=1)  # the original's torch.std(): n - 1 in the denominator
    assert metrics["mad"] == pytest.approx((synthetic.mean() - control.mean()) / sample_std)
    assert metrics["mean"] == pytest.approx(synthetic.mean())
    assert metrics["u1"] == pytest.approx((1 - metrics["auc"]) * 200 * 5)
    assert 0 < metrics["p"] < 0.05
    from scipy.stats import pointbiserialr
    from sklearn.metrics import average_precision_score

    values = np.r_[control, synthetic]
    assert metrics["auprc"] == pytest.approx(average_precision_score(labels, values), rel=1e-7)
    assert metrics["correlation"] == pytest.approx(pointbiserialr(labels, values)[0], rel=1e-7)
    tied = np.round(np.r_[control, synthetic], 0)  # many ties: they enter together
    assert score_all(tied[:200], tied[200:])["auprc"] == pytest.approx(
        average_precision_score(labels, tied), rel=1e-7
    )
    assert score_all(np.zeros(4), np.zeros(2))["correlation"] == 0.0  # flat: no relation


def test_mad_divides_by_one_when_controls_do_not_spread_and_ties_count_half():
    assert score_all(np.zeros(10), np.zeros(3))["auc"] == 0.5
    silent_controls = score_all(np.zeros(50), np.array([2.0, 3.0, 4.0]))  # a sparse unit
    assert silent_controls["mad"] == 3.0  # the signal is kept (it used to be erased to 0)
    assert score_all(np.array([1.0]), np.array([2.0, 4.0]))["mad"] == 2.0


def test_slugs_are_safe_and_distinct():
    assert slugify("../../x").startswith("x-")
    assert "/" not in slugify("a/b") and slugify("a/b") != slugify("a b")
    assert slugify("???").startswith("concept-")


def test_options_from_the_python_api_are_checked_like_the_cli(tmp_path):
    """The library's own checks (the CLI's Click ranges do not reach `nacosae.api` callers)."""
    from nacosae.search.options import ExplainOptions

    for field, value, problem in (
        ("num_inf_steps", 0, "--num-inf-steps must be at least 1"),
        ("max_new_tokens", 8, "--max-new-tokens must be at least 16"),
        ("reasoning_chars", 0, "--reasoning-chars must be at least 1"),
    ):
        options = ExplainOptions(["0"], tmp_path / "runs", tmp_path / "controls")
        setattr(options, field, value)
        with pytest.raises(NacosaeError, match=problem):
            options.validate()
