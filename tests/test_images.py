import pytest
from PIL import Image

from nacosae.data.images import ControlImages, list_image_folder, open_rgb
from nacosae.errors import ImagesNotFound
from nacosae.models.preprocessing import DEFAULT


def test_listing_is_class_major_and_sorted(image_tree):
    listing = list_image_folder(image_tree)
    assert [c.folder for c in listing.classes] == ["class_00", "class_01", "class_02"]
    assert listing.files == sorted(listing.files)
    assert listing.labels == [0] * 4 + [1] * 4 + [2] * 4
    assert listing.dataset_id() == list_image_folder(image_tree).dataset_id()


def test_dataset_id_changes_with_the_files(tmp_path, image_tree):
    import shutil

    copy = tmp_path / "val"
    shutil.copytree(image_tree, copy)
    before = list_image_folder(copy).dataset_id()
    (copy / "class_00" / "img_000.jpg").unlink()
    assert list_image_folder(copy).dataset_id() != before


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "I;16"])
def test_every_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    Image.new(mode, (20, 10)).save(path)
    image = open_rgb(path)
    assert image.mode == "RGB" and image.size == (20, 10)


def test_missing_empty_and_flat_folders(tmp_path):
    with pytest.raises(ImagesNotFound, match="does not exist"):
        list_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImagesNotFound, match="no class folders"):
        list_image_folder(tmp_path / "empty")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.jpg")
    with pytest.raises(ImagesNotFound, match="images but no class folders"):
        list_image_folder(flat)
    hollow = tmp_path / "hollow"
    (hollow / "cls").mkdir(parents=True)
    (hollow / "cls" / "notes.txt").write_text("no images")
    with pytest.raises(ImagesNotFound, match="contain no image files"):
        list_image_folder(hollow)


def test_unreadable_image_is_flagged_not_fatal(tmp_path, image_tree):
    import shutil

    tree = tmp_path / "val"
    shutil.copytree(image_tree, tree)
    (tree / "class_01" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    listing = list_image_folder(tree)
    dataset = ControlImages(listing, list(range(len(listing))), DEFAULT.transform(), DEFAULT.size)
    flags = {listing.files[dataset[i][1]]: dataset[i][2] for i in range(len(dataset))}
    assert flags.pop("class_01/broken.jpg") is False
    assert all(flags.values())
    assert dataset[0][0].shape == (3, 224, 224)


def test_classes_json_supplies_labels_and_wnids(tmp_path, image_tree):
    import json
    import shutil

    tree = tmp_path / "val"
    shutil.copytree(image_tree, tree)
    (tree / "classes.json").write_text(
        json.dumps(
            [{"index": 0, "wnid": "n01440764", "folder": "class_00", "label": "tench, Tinca"}]
        )
    )
    listing = list_image_folder(tree)
    assert listing.classes[0].wnid == "n01440764"
    assert listing.classes[0].label == "tench, Tinca"
    assert listing.classes[1].label == "class_01"
