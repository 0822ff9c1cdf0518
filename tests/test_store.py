"""The store format on its own: round trip, layout, verification, conflicts, resume."""

import json

import pytest
import torch
from safetensors import safe_open

from nacosae.errors import ControlsMissing, CorruptStore, NeuronOutOfRange, StoreConflict
from nacosae.store.activations import ControlStore, StoreBuilder, shard_spans

IDENTITY = {
    "model": "m",
    "layer": "l",
    "weights": "w",
    "dataset": "d",
    "dtype": "float32",
    "preprocessing": "q",
    "units": {"tokens": "cls", "sae": None},
}
CLASSES = [{"index": i, "wnid": None, "folder": f"c{i}", "label": f"c{i}"} for i in range(3)]


def make_builder(directory, identity=IDENTITY, n_files=10, shard_size=4):
    details = {"pooling": "p", "preprocessing": "q", "classes": CLASSES}
    return StoreBuilder(directory, dict(identity), 5, shard_spans(n_files, shard_size), details)


def data():
    torch.manual_seed(0)
    acts = torch.randn(10, 5)
    labels = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    return acts, labels


def build(directory, stop_after=None):
    acts, labels = data()
    builder = make_builder(directory)
    done = builder.begin()
    for i, (a, b) in enumerate(builder.spans):
        if i < done:
            continue
        if stop_after is not None and i >= stop_after:
            return builder
        builder.write_shard(i, acts[a:b], labels[a:b], [])
    builder.finish([c["folder"] for c in CLASSES])
    return builder


def test_round_trip_layout(tmp_path):
    build(tmp_path)
    acts, labels = data()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "activations-00001-of-00003.safetensors",
        "activations-00002-of-00003.safetensors",
        "activations-00003-of-00003.safetensors",
        "index.json",
        "units.safetensors",
    ]
    store = ControlStore(tmp_path)
    assert store.n_units == 5 and store.n_images == 10
    assert torch.equal(store.unit(3), acts[:, 3])
    assert torch.equal(store.image_major(), acts)
    means = store.class_means()
    assert torch.allclose(means[1], acts[3:7].mean(0))
    assert [c["rows"] for c in store.classes] == [[0, 3], [3, 7], [7, 10]]
    with safe_open(str(tmp_path / "units.safetensors"), "pt") as f:
        assert f.get_tensor("activations").shape == (5, 10)
        assert f.metadata()["layout"] == "activations[units, images]"
    with safe_open(str(tmp_path / "activations-00002-of-00003.safetensors"), "pt") as f:
        assert f.get_tensor("activations").shape == (4, 5)
        assert f.metadata()["rows"] == "4:8"
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["status"] == "complete"
    assert [s["rows"] for s in index["shards"]] == [[0, 4], [4, 8], [8, 10]]


def test_unit_out_of_range(tmp_path):
    build(tmp_path)
    with pytest.raises(NeuronOutOfRange, match="valid ids are 0 to 4"):
        ControlStore(tmp_path).unit(5)


def test_truncated_shard_is_detected_on_open(tmp_path):
    build(tmp_path)
    shard = tmp_path / "activations-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(CorruptStore, match="activations-00002-of-00003.*--overwrite"):
        ControlStore(tmp_path)


def test_altered_bytes_fail_the_sha256_check(tmp_path):
    build(tmp_path)
    units = tmp_path / "units.safetensors"
    raw = bytearray(units.read_bytes())
    raw[-1] ^= 0xFF
    units.write_bytes(bytes(raw))
    with pytest.raises(CorruptStore, match="units.safetensors fails its sha256 check"):
        ControlStore(tmp_path)


def test_unfinished_or_absent_store_is_reported(tmp_path):
    with pytest.raises(ControlsMissing):
        ControlStore(tmp_path)
    build(tmp_path, stop_after=2)
    with pytest.raises(ControlsMissing, match="unfinished.*resume"):
        ControlStore(tmp_path)


def test_resume_starts_at_the_first_missing_shard(tmp_path):
    build(tmp_path / "whole")
    build(tmp_path / "split", stop_after=2)
    assert make_builder(tmp_path / "split").begin() == 2
    build(tmp_path / "split")
    for name in ("activations-00003-of-00003.safetensors", "units.safetensors"):
        assert same_safetensors(tmp_path / "whole" / name, tmp_path / "split" / name)


def same_safetensors(a, b) -> bool:
    """Equal tensors and metadata (the header's key order is not fixed by safetensors)."""
    with safe_open(str(a), "pt") as fa, safe_open(str(b), "pt") as fb:
        if fa.metadata() != fb.metadata() or sorted(fa.keys()) != sorted(fb.keys()):
            return False
        return all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def test_resume_rewrites_a_damaged_last_shard(tmp_path):
    build(tmp_path, stop_after=2)
    shard = tmp_path / "activations-00002-of-00003.safetensors"
    shard.write_bytes(b"half")
    assert make_builder(tmp_path).begin() == 1


def test_conflicting_store_is_refused_unless_overwrite(tmp_path):
    build(tmp_path)
    other = {**IDENTITY, "weights": "other"}
    with pytest.raises(StoreConflict, match="weights: stored 'w', requested 'other'"):
        make_builder(tmp_path, identity=other).begin()
    assert ControlStore(tmp_path).n_images == 10  # untouched
    builder = make_builder(tmp_path, identity=other)
    assert builder.begin(overwrite=True) == 0
    assert not (tmp_path / "units.safetensors").exists()


def test_complete_store_with_same_identity_is_kept(tmp_path):
    build(tmp_path)
    builder = make_builder(tmp_path)
    builder.begin()
    assert builder.complete


def test_corrupt_index_is_reported(tmp_path):
    build(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(CorruptStore, match="index.json is unreadable"):
        ControlStore(tmp_path)
    with pytest.raises(CorruptStore):
        make_builder(tmp_path).begin()
    assert make_builder(tmp_path).begin(overwrite=True) == 0
