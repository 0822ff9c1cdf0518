"""What the original project produced, read by nacosae: its control activations
(`controls --from-original`), written here the way its `calculate_control_activations.py`
writes them (one `torch.save`d `[images, units]` tensor per class folder name)."""

import json
import pickle

import pytest
import torch

from nacosae.store.activations import ControlStore
from tests.chatserver import ChatServer
from tests.test_explain import answers, events_of, explain_args, only_run

# three of the original's folder names, with its renamed duplicate, in listdir's own order
FOLDERS = {"crane2": 0.5, "tench": 2.0, "cardigan_welsh_corgi": 1.0, "crane": 3.0}
UNITS = 32  # tiny_cnn avgpool


def write_original(folder, dtype=torch.float32):
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    saved = {}
    for name, level in FOLDERS.items():
        values = (torch.rand(5, UNITS, generator=generator) + level).to(dtype)
        torch.save(values, folder / f"{name}.pt")
        saved[name] = values
    return saved


def test_the_originals_files_import_into_a_store_in_imagenet_order(invoke, tmp_path):
    saved = write_original(tmp_path / "original")
    result = invoke(
        "controls", "--from-original", tmp_path / "original", "--model", "tiny_cnn",
        "--layer", "avgpool",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "imported: 20 rows x 32 units (float32, 4 classes)" in result.output
    store = ControlStore(tmp_path.with_name(f"{tmp_path.name}-home") / "controls/tiny_cnn/avgpool")
    classes = [(c["folder"], c["wnid"], c["concept"]) for c in store.classes]
    assert classes == [
        ("tench", "n01440764", "tench"),
        ("crane", "n02012849", "crane (bird)"),
        ("cardigan_welsh_corgi", "n02113186", "cardigan welsh corgi"),
        ("crane2", "n03126707", "construction crane"),
    ]  # label order, WordNet ids from the names, the cranes apart
    for index, (folder, _, _) in enumerate(classes):
        start, stop = store.classes[index]["rows"]
        assert torch.allclose(store.image_major()[start:stop], saved[folder])
        assert torch.allclose(store.class_means()[index], saved[folder].mean(dim=0))
    assert store.index["dtype"] == "float32" and store.index["dataset_root"] is None

    ranked = invoke("top-images", "--model", "tiny_cnn", "--neuron-id", "3", "--classes")
    assert ranked.exit_code == 0, ranked.output
    lines = [line for line in ranked.output.splitlines() if "│" in line and "rank" not in line]
    assert "crane (bird)" in lines[0] and "crane2" in lines[-1]  # by class mean
    images = invoke("top-images", "--model", "tiny_cnn", "--neuron-id", "3", "--k", "2")
    assert images.exit_code == 0 and "imported, no image files" in images.output
    again = invoke("controls", "--from-original", tmp_path / "original", "--model", "tiny_cnn")
    assert again.exit_code == 0 and "already complete" in again.output


def test_half_precision_is_kept_and_per_image_files_are_stacked(invoke, tmp_path):
    write_original(tmp_path / "half", torch.float16)
    assert (
        invoke("controls", "--from-original", tmp_path / "half", "--model", "tiny_cnn").exit_code
        == 0
    )
    home = tmp_path.with_name(f"{tmp_path.name}-home")
    assert ControlStore(home / "controls/tiny_cnn/avgpool").index["dtype"] == "float16"
    per_image = tmp_path / "per-image"
    for name in ("tench", "crane"):
        (per_image / name).mkdir(parents=True)
        for k in range(3):  # one [units, H, W] map per image: pooled over H, W as the original
            torch.save(torch.full((UNITS, 2, 2), float(k)), per_image / name / f"{k}.pt")
    result = invoke("controls", "--from-original", per_image, "--model", "tiny_cnn", "--overwrite")
    assert result.exit_code == 0, result.output
    store = ControlStore(home / "controls/tiny_cnn/avgpool")
    assert store.n_images == 6 and torch.equal(store.unit(0), torch.tensor([0.0, 1, 2] * 2))


class NotATensor:
    pass


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("abacus", {"activations": torch.zeros(2, UNITS)}, "holds a dict, not a tensor"),
        ("abacus", NotATensor(), "is not a plain tensor file"),
        ("tench", torch.zeros(3, 7), "has 7 units, but tiny_cnn avgpool has 32"),
        ("abacus", torch.zeros(3, 7), "abacus.pt has 7 units"),
        ("abacus", torch.zeros(7), "a class file is [images, units]"),
    ],
)
def test_anything_but_a_plain_tensor_of_the_layer_is_one_line(
    invoke, tmp_path, name, content, problem
):
    folder = tmp_path / "bad"
    write_original(folder)
    torch.save(content, folder / f"{name}.pt")
    result = invoke("controls", "--from-original", folder, "--model", "tiny_cnn")
    assert result.exit_code == 1
    assert problem in result.output and "Traceback" not in result.output
    assert not (tmp_path.with_name(f"{tmp_path.name}-home") / "controls/tiny_cnn").exists()


def test_a_full_unpickle_never_happens(invoke, tmp_path, monkeypatch):
    folder = tmp_path / "evil"
    folder.mkdir()
    ran = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (ran.touch, ())

    (folder / "tench.pt").write_bytes(pickle.dumps(Payload()))
    result = invoke("controls", "--from-original", folder, "--model", "tiny_cnn")
    assert result.exit_code == 1 and "not a plain tensor file" in result.output
    assert not ran.exists()


def test_explain_with_the_original_names_runs_on_an_imported_store(invoke, t2i_dir, tmp_path):
    write_original(tmp_path / "original")
    assert (
        invoke(
            "controls", "--from-original", tmp_path / "original", "--model", "tiny_cnn"
        ).exit_code
        == 0
    )
    with ChatServer(answers("<answer>blue sky</answer>", "<answer>moss</answer>")) as server:
        args = explain_args(t2i_dir, server, "--neuron-id", "1", "--n-iters", "1")
        result = invoke(*args, "--class-names", "original", "--metric", "mean")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "runs")
    initial = [e["concept"] for e in events_of(run) if e["iteration"] == 0]
    assert set(initial) == {"tench", "crane", "cardigan welsh corgi", "crane2"}
    record = json.loads((run / "run.json").read_text())
    assert record["control_store"]["dataset"].startswith("original:")


def write_original_run(save_dir, run_id, neuron, steps, final, best):
    """A run folder as the original's pipeline and history_managing write it: params.txt of
    config reprs, the histories, reasoning and best concepts as JSON lines, JPEG images per
    LLM step (the summary under iteration n_iters again)."""
    from PIL import Image

    folder = save_dir / run_id
    (folder / "images").mkdir(parents=True)
    n_iters = len(steps) - 1
    params = {
        "run_id": run_id,
        "load_config": {
            "language_model_id": "meta-llama/Llama-3.1-8B-Instruct",
            "text_to_image_model_id": "stabilityai/stable-diffusion-xl-base-1.0",
            "explained_model_id": "tiny_cnn",
            "language_model_kwargs": {
                "max_new_tokens": 3000,
                "prompt_path": "prompts/templates/prompt_main.txt",
                "summary_prompt_path": "prompts/templates/prompt_summary.txt",
            },
            "text_to_image_model_kwargs": {"num_inference_steps": 25, "guidance_scale": 0},
            "explained_model_kwargs": {"layer": "avgpool"},
            "model_swapping": True,
        },
        "image_generation_config": {"n_images": 2, "prompt_text": "A realstic photo of a"},
        "concept_history_config": {"n_best_concepts": 5, "n_random_concepts": 5},
        "history_managing_config": {"save_images": True, "save_histories": True,
                                    "save_directory": str(save_dir)},
        "neuron_id": neuron,
        "model_layer_activations_path": "control_activations/tiny_cnn/avgpool",
        "metric": "AVG_ACTIVATION",
    }  # fmt: skip
    (folder / "params.txt").write_text("\n".join(f"{k}: {v}" for k, v in params.items()))
    (folder / "generation_history.txt").write_text("\n".join(f"{c},{s}" for c, s, _ in steps))
    (folder / "final_concept_history.txt").write_text("\n".join(f"{c},{s}" for c, s in final))
    (folder / "reasoning.txt").write_text(
        "\n".join(json.dumps({"concept": c, "reasoning": r}) for c, _, r in steps)
    )
    (folder / "best_concepts.txt").write_text(
        "\n".join(
            json.dumps({"iteration": min(k, n_iters), "best_concept": best[0],
                        "best_score": best[1]})
            for k in range(1, len(steps) + 1)
        )
    )  # fmt: skip
    for k, (concept, _, _) in enumerate(steps, start=1):
        images = folder / "images" / f"iteration_{min(k, n_iters)}_{concept.replace(' ', '_')}"
        images.mkdir(exist_ok=True)
        for number in (1, 2):
            Image.new("RGB", (16, 16), (40 * k, 10 * number, 0)).save(
                images / f"image_{number}.jpeg", format="jpeg"
            )
    return folder


STEPS = [
    ("blue sky", 1.25, "the top classes are all outdoors"),
    ("red, bright apple", 2.5, "round red things"),  # a comma in a concept
    ("moss", 0.75, "green"),
    ("bright apple", 2.0, "unify the top three"),  # the summary
]
FINAL = [("tench", 1.5), ("red, bright apple", 2.5), ("bright apple", 2.0), ("crane2", 0.5)]


def test_the_originals_runs_import_for_report_and_evaluate(invoke, tmp_path, monkeypatch):
    save = tmp_path / "original-results"
    write_original_run(save, "2025-05-01_120000tiny_cnnavgpool1", 1, STEPS, FINAL,
                       ("red, bright apple", 2.5))  # fmt: skip
    write_original_run(save, "2025-05-01_130000tiny_cnnavgpool2", 2, STEPS[:2] + STEPS[3:],
                       FINAL, ("red, bright apple", 2.5))  # fmt: skip
    (save / "notes").mkdir()  # not a run: left alone
    result = invoke("import-runs", save, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "imported 2 run(s)" in result.output
    run = tmp_path / "runs" / "2025-05-01_120000tiny_cnnavgpool1"
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "done" and record["imported"]["format"] == "nacosae-original-run"
    assert record["config"]["metric"] == "mean" and record["config"]["n_iters"] == 3
    assert record["config"]["t2i_model"] == "stabilityai/stable-diffusion-xl-base-1.0"
    events = events_of(run)
    assert [(e["iteration"], e["source"], e["concept"], e["score"]) for e in events] == [
        (0, "initial", "tench", 1.5),
        (0, "initial", "crane2", 0.5),
        (1, "llm", "blue sky", 1.25),
        (2, "llm", "red, bright apple", 2.5),
        (3, "llm", "moss", 0.75),
        (4, "summary", "bright apple", 2.0),
    ]
    assert events[2]["reasoning"] == "the top classes are all outdoors"
    assert events[5]["metrics"] == {"mean": 2.0} and len(events[5]["images"]) == 2
    assert all((run / path).is_file() for e in events for path in e["images"])
    summary = json.loads((run / "summary.json").read_text())["neurons"]["1"]
    assert summary["best"]["concept"] == "red, bright apple" and summary["best"]["iteration"] == 2

    rows = invoke("report", tmp_path / "runs", "--format", "json")
    assert rows.exit_code == 0, rows.output
    found = {(r["run_id"], r["neuron"], r["concept"], r["status"]) for r in json.loads(rows.stdout)}
    assert ("2025-05-01_120000tiny_cnnavgpool1", 1, "red, bright apple", "done") in found
    assert len(found) == 2
    markdown = invoke("report", tmp_path / "runs", "--format", "md", "--out", tmp_path / "r.md")
    assert markdown.exit_code == 0, markdown.output
    assert "red, bright apple" in (tmp_path / "r.md").read_text()
    scored = invoke("evaluate", "--preset", "smoke", run, "--top-k", "2", "--num-img", "2",
                    "--out", tmp_path / "eval")  # fmt: skip
    assert scored.exit_code == 0, scored.output
    table = (tmp_path / "eval" / "evaluation.csv").read_text()
    assert "red, bright apple" in table and "bright apple" in table

    again = invoke("import-runs", save, "--out", tmp_path / "runs")
    assert again.exit_code == 0 and "already imported" in again.output
    assert not list((tmp_path / "runs").glob(".*"))  # no staging folder left

    from tests.test_dashboard import app

    at = app("app.py", tmp_path / "runs", monkeypatch, run.name)
    assert not at.exception and at.header[0].value == "Neuron 1: red, bright apple"
    for page in ("pages/1_Images.py", "pages/2_Reasoning.py", "pages/4_Layer.py"):
        at.switch_page(page).run()
        assert not at.exception, page


def test_a_damaged_original_run_is_skipped_with_one_line(invoke, tmp_path):
    save = tmp_path / "original-results"
    good = write_original_run(save, "run-a", 1, STEPS, FINAL, ("moss", 0.75))
    bad = write_original_run(save, "run-b", 2, STEPS, FINAL, ("moss", 0.75))
    (bad / "generation_history.txt").write_text("blue sky,not-a-number\n")
    result = invoke("import-runs", save, "--out", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "line 1 is not 'concept,score'" in result.output and "Traceback" not in result.output
    assert (tmp_path / "runs" / good.name / "run.json").is_file()
    assert not (tmp_path / "runs" / bad.name).exists()
    missing = invoke("import-runs", tmp_path / "nowhere", "--out", tmp_path / "runs")
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_the_originals_analyses_across_units(invoke, tmp_path):
    from nacosae.report.analyses import analyse
    from nacosae.report.runs import list_runs

    save = tmp_path / "original-results"
    write_original_run(save, "a", 1, STEPS, FINAL, ("red, bright apple", 2.5))  # iteration 2
    best_summary = [*STEPS[:3], ("golden apple", 3.0, "unify")]
    write_original_run(save, "b", 2, best_summary, FINAL, ("golden apple", 3.0))
    low = [(c, 0.1, r) for c, _, r in STEPS]
    write_original_run(save, "c", 3, low, [("tench", 1.5), ("moss", 0.1)], ("tench", 1.5))
    assert invoke("import-runs", save, "--out", tmp_path / "runs").exit_code == 0
    (group,) = analyse(list_runs(tmp_path / "runs"))
    assert group.best_iteration_counts() == {"0": 1, "2": 1, "summary": 1}
    assert group.class_name_share() == (1, 3)  # "tench", the original's class name
    curves = {u.run_id: u.curve for u in group.units}
    assert curves["a"] == [1.5, 1.5, 2.5, 2.5, 2.5]
    assert curves["b"][-1] == 3.0 and curves["c"] == [1.5] * 5

    novelty = tmp_path / "novelty.csv"
    novelty.write_text("neuron,concept,nearest,similarity,novel\n1,x,y,0.2,True\n2,z,z,1.0,False\n")
    out = tmp_path / "report.md"
    result = invoke("report", tmp_path / "runs", "--format", "md", "--out", out,
                    "--novelty", novelty)  # fmt: skip
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "## Across units: tiny_cnn avgpool (mean, 3 units)" in text
    assert "control-class names (exact match" in text and "1 of 3 (33%)" in text
    assert "new by MiniLM similarity (evaluate --novelty): 1 of 2 (50%)" in text
    refused = invoke("report", tmp_path / "runs", "--format", "csv", "--novelty", novelty)
    assert refused.exit_code == 2
