"""`nacosae download imagenet`: the class table, parquet -> ImageFolder, and the gated hub."""

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from nacosae.data import imagenet
from nacosae.data.imagenet import imagenet_classes
from nacosae.data.images import list_image_folder

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
TOKEN = "hf_valid_test_token"


def jpeg(mode: str, seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, format="JPEG")
    return buffer.getvalue()


def write_parquet(path, rows, schema=None):
    """rows: (file name, bytes, label); written in the hub's schema."""
    table = pa.table(
        {
            "image": pa.array([{"bytes": b, "path": n} for n, b, _ in rows], type=IMAGE_TYPE),
            "label": pa.array([label for _, _, label in rows], type=pa.int64()),
        }
    )
    pq.write_table(table if schema is None else table.rename_columns(schema), path)
    return path


def sample_rows(start: int, labels: list[int]):
    modes = ["RGB", "L", "CMYK"]
    return [
        (f"ILSVRC2012_val_{start + i:08d}.JPEG", jpeg(modes[i % 3], start + i), label)
        for i, label in enumerate(labels)
    ]


@pytest.fixture
def parquet_dir(tmp_path):
    folder = tmp_path / "parquet" / "data"
    folder.mkdir(parents=True)
    write_parquet(folder / "validation-00000-of-00002.parquet", sample_rows(1, [0, 264, 474, 0]))
    write_parquet(folder / "validation-00001-of-00002.parquet", sample_rows(5, [638, 639, 999]))
    return folder


def tree_contents(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "classes.json" and not p.name.startswith(".")
    }


def test_class_table_is_complete_and_concept_names_are_unambiguous():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert [c.index for c in classes] == list(range(1000))
    assert [c.wnid for c in classes] == sorted(c.wnid for c in classes)
    assert [c.folder for c in classes] == [c.wnid for c in classes]  # the default layout
    assert classes[0].label == "tench, Tinca tinca" and classes[0].concept == "tench"
    concepts = [c.concept for c in classes]
    assert len(set(concepts)) == 1000
    assert all(c == c.lower() and c.strip() == c and "  " not in c for c in concepts)
    synonyms: dict[str, set[int]] = {}
    for c in classes:
        for synonym in c.label.split(","):
            synonyms.setdefault(synonym.strip().lower(), set()).add(c.index)
    for c in classes:  # a concept never names another class
        assert synonyms.get(c.concept, {c.index}) == {c.index}, (c.index, c.concept)
    by_wnid = {c.wnid: c.concept for c in classes}
    assert by_wnid["n02113186"] == "cardigan welsh corgi"
    assert by_wnid["n02963159"] == "cardigan sweater"
    assert {by_wnid["n02012849"], by_wnid["n03126707"]} == {"crane (bird)", "construction crane"}
    assert by_wnid["n03710721"] == "tank suit" and by_wnid["n03710637"] != "maillot"
    named = imagenet_classes("name")
    assert len({c.folder for c in named}) == 1000
    assert all(re.fullmatch(r"[a-z0-9_]+", c.folder) for c in named)
    assert named[264].folder == "cardigan_welsh_corgi"


def test_from_parquet_builds_the_tree_offline(invoke, parquet_dir, tmp_path):
    out = tmp_path / "val"
    result = invoke("download", "imagenet", "--from-parquet", parquet_dir.parent, "--out", out)
    assert result.exit_code == 0, result.output
    classes = {c.index: c for c in imagenet_classes()}
    tree = tree_contents(out)
    assert len(tree) == 7
    for name, data, label in sample_rows(1, [0, 264, 474, 0]) + sample_rows(5, [638, 639, 999]):
        assert tree[f"{classes[label].wnid}/{name}"] == data  # bytes as stored, no re-encoding
    index = imagenet.read_classes_json(out)
    assert len(index["classes"]) == 1000 and index["images"] == 7 and index["layout"] == "wnid"
    assert index["classes"][264]["wnid"] == "n02113186"
    assert index["classes"][264]["concept"] == "cardigan welsh corgi"
    assert index["complete"] is False and index["expected_images"] == 50_000
    assert "49,993 of 50,000 validation images are missing" in result.output
    listing = list_image_folder(out)  # usable as the controls image folder
    assert len(listing) == 7
    assert {c.concept for c in listing.classes} == {
        "tench", "cardigan welsh corgi", "cardigan sweater", "maillot leotard", "tank suit",
        "toilet tissue",
    }  # fmt: skip


def test_a_partial_wnid_tree_is_an_imagefolder_numbered_like_the_classifier(
    invoke, parquet_dir, tmp_path
):
    """torchvision reads the tree as it is: no empty class folders, wnid order = label order."""
    from torchvision.datasets import ImageFolder

    out = tmp_path / "val"
    first = parquet_dir / "validation-00000-of-00002.parquet"
    only = tmp_path / "one" / "data"
    only.mkdir(parents=True)
    first.rename(only / first.name)  # one parquet file of two: a partial tree
    assert invoke("download", "imagenet", "--from-parquet", only, "--out", out).exit_code == 0
    dataset = ImageFolder(str(out))
    assert dataset.classes == ["n01440764", "n02113186", "n02963159"]
    assert len(dataset) == 4
    assert all(any(p.iterdir()) for p in out.iterdir() if p.is_dir())


def test_name_layout_and_no_mixing_of_layouts(invoke, parquet_dir, tmp_path):
    from torchvision.datasets import ImageFolder

    out = tmp_path / "val"
    args = ("download", "imagenet", "--from-parquet", parquet_dir, "--out", out)
    assert invoke(*args, "--layout", "name").exit_code == 0
    assert "cardigan_welsh_corgi" in ImageFolder(str(out)).classes
    mixed = invoke(*args)  # the default layout is wnid
    assert mixed.exit_code == 1
    assert "laid out by name: pass --layout name" in mixed.output
    assert invoke(*args, "--layout", "bogus").exit_code == 2


def test_rerun_skips_what_is_written(invoke, parquet_dir, tmp_path):
    out = tmp_path / "val"
    args = ("download", "imagenet", "--from-parquet", parquet_dir, "--out", out)
    invoke(*args)
    result = invoke(*args)
    assert result.exit_code == 0
    assert "0 written now, 7 already there" in result.output


def test_parquet_with_another_schema(invoke, tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    write_parquet(
        folder / "validation-00000-of-00001.parquet", sample_rows(1, [3]), schema=["img", "label"]
    )
    result = invoke("download", "imagenet", "--from-parquet", folder, "--out", tmp_path / "val")
    assert result.exit_code == 1
    assert "validation-00000-of-00001.parquet is not an ImageNet-1k parquet file" in result.output
    assert not (tmp_path / "val").exists()


def test_a_corrupt_parquet_file_leaves_nothing_behind(invoke, parquet_dir, tmp_path):
    (parquet_dir / "validation-00001-of-00002.parquet").write_bytes(b"PAR1 cut short")
    out = tmp_path / "val"
    result = invoke("download", "imagenet", "--from-parquet", parquet_dir, "--out", out)
    assert result.exit_code == 1
    assert "validation-00001-of-00002.parquet is not a readable parquet file" in result.output
    assert not out.exists()  # the good first file was not written either


@pytest.mark.parametrize("label", [1000, -1])
def test_label_out_of_range(invoke, tmp_path, label):
    folder = tmp_path / "pq"
    folder.mkdir()
    write_parquet(folder / "validation-00000-of-00001.parquet", sample_rows(1, [5, label]))
    result = invoke("download", "imagenet", "--from-parquet", folder, "--out", tmp_path / "val")
    assert result.exit_code == 1
    assert f"label {label} is outside 0..999" in result.output
    assert not (tmp_path / "val").exists()


def test_missing_parquet_folder(invoke, tmp_path):
    result = invoke("download", "imagenet", "--from-parquet", tmp_path / "nowhere")
    assert result.exit_code == 1
    assert "does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = invoke("download", "imagenet", "--from-parquet", tmp_path / "empty")
    assert "no validation-*.parquet files" in result.output


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt])
def test_interrupted_extraction_is_repaired_by_a_rerun(
    invoke, parquet_dir, tmp_path, monkeypatch, failure
):
    reference = tmp_path / "reference"
    invoke("download", "imagenet", "--from-parquet", parquet_dir, "--out", reference)
    out = tmp_path / "val"
    real_write = imagenet.write_image_file
    calls = []

    def failing_write(path, data):
        calls.append(path)
        if len(calls) == 4:
            # a partial file, as a full disk or a kill leaves it, then the failure
            path.with_name(f".{path.name}.part").write_bytes(data[:10])
            raise failure
        real_write(path, data)

    monkeypatch.setattr(imagenet, "write_image_file", failing_write)
    result = invoke("download", "imagenet", "--from-parquet", parquet_dir, "--out", out)
    if isinstance(failure, OSError):
        assert result.exit_code == 1
        assert "No space left on device" in result.output and "rerun" in result.output
    else:
        assert result.exit_code == 130
    assert len(tree_contents(out)) == 3  # finished images only, nothing half-written visible
    monkeypatch.setattr(imagenet, "write_image_file", real_write)
    result = invoke("download", "imagenet", "--from-parquet", parquet_dir, "--out", out)
    assert result.exit_code == 0
    assert tree_contents(out) == tree_contents(reference)
    assert not list(out.rglob("*.part"))


# ---------------------------------------------------------------- the gated hub


def serve_imagenet(hub, parquet_dir, allowed=True):
    files = {f"data/{p.name}": p.read_bytes() for p in parquet_dir.glob("*.parquet")}
    files["classes.py"] = b"# not downloaded"
    files["data/test-00000-of-00001.parquet"] = b"not downloaded either"
    hub.valid_tokens |= {TOKEN, "hf_other"}
    hub.add(
        "dataset",
        imagenet.REPO_ID,
        files,
        gated=True,
        allowed_tokens={TOKEN} if allowed else set(),
    )


def test_no_token_says_how_to_set_it(invoke, fake_hub, parquet_dir):
    serve_imagenet(fake_hub, parquet_dir)
    result = invoke("download", "imagenet")
    assert result.exit_code == 1
    assert "no token is set" in result.output and "HF_TOKEN" in result.output
    assert "accept its terms" in result.output
    assert fake_hub.requests == []  # refused before touching the network


def test_rejected_token(invoke, fake_hub, parquet_dir):
    serve_imagenet(fake_hub, parquet_dir)
    result = invoke("download", "imagenet", "--token", "hf_wrong")
    assert result.exit_code == 1
    assert "rejected the token" in result.output


def test_token_without_accepted_terms(invoke, fake_hub, parquet_dir):
    serve_imagenet(fake_hub, parquet_dir, allowed=False)
    result = invoke("download", "imagenet", "--token", "hf_other")
    assert result.exit_code == 1
    assert "accept its terms" in result.output


def test_download_from_the_hub_with_token_from_env(
    invoke, fake_hub, parquet_dir, tmp_path, monkeypatch
):
    serve_imagenet(fake_hub, parquet_dir)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    out = tmp_path / "val"
    result = invoke("download", "imagenet", "--out", out)
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output
    reference = tmp_path / "reference"
    invoke("download", "imagenet", "--from-parquet", parquet_dir, "--out", reference)
    assert tree_contents(out) == tree_contents(reference)
    fetched = sorted(p.rsplit("/", 1)[-1] for p in fake_hub.downloads())
    assert fetched == ["validation-00000-of-00002.parquet", "validation-00001-of-00002.parquet"]
    cached = list((tmp_path / "hf_cache").rglob("validation-*.parquet"))
    assert len(cached) == 2  # kept by default


def test_token_from_dotenv_and_no_keep_parquet(
    invoke, fake_hub, parquet_dir, tmp_path, isolated_env
):
    serve_imagenet(fake_hub, parquet_dir)
    (tmp_path / ".env").write_text(f"HF_TOKEN={TOKEN}\n")  # tests run in tmp_path
    result = invoke("download", "imagenet", "--no-keep-parquet")
    assert result.exit_code == 0, result.output
    assert not list((tmp_path / "hf_cache").rglob("validation-*.parquet"))
    assert len(tree_contents(isolated_env / "data/imagenet/val")) == 7


def test_cut_off_download_is_retried(invoke, fake_hub, parquet_dir, tmp_path):
    serve_imagenet(fake_hub, parquet_dir)
    name = "data/validation-00001-of-00002.parquet"
    fake_hub.fail_after_bytes[name] = 100
    result = invoke("download", "imagenet", "--token", TOKEN, "--out", tmp_path / "val")
    assert result.exit_code == 0, result.output
    assert len(tree_contents(tmp_path / "val")) == 7
    gets = [r for r in fake_hub.requests if r[0] == "GET" and r[1].endswith(name)]
    assert len(gets) == 2  # cut off once, fetched again by the same command


def test_each_split_has_its_own_default_tree(invoke, parquet_dir, isolated_env):
    import shutil

    val = invoke("download", "imagenet", "--from-parquet", parquet_dir.parent)
    assert val.exit_code == 0, val.output
    for name in ("validation-00000-of-00002", "validation-00001-of-00002"):
        shutil.copy(
            parquet_dir / f"{name}.parquet",
            parquet_dir / f"{name.replace('validation', 'train')}.parquet",
        )
    train = invoke("download", "imagenet", "--from-parquet", parquet_dir.parent, "--split", "train")
    assert train.exit_code == 0, train.output
    data = isolated_env / "data" / "imagenet"
    assert imagenet.read_classes_json(data / "val")["split"] == "validation"
    assert imagenet.read_classes_json(data / "train")["split"] == "train"
    mixed = invoke("download", "imagenet", "--from-parquet", parquet_dir.parent, "--split", "train",
                   "--out", data / "val")  # fmt: skip
    assert mixed.exit_code == 1 and "holds the validation split" in mixed.output
