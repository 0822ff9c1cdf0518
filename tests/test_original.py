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
