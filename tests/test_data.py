"""Scanning folders, splitting, the manifest and decoding: no TensorFlow needed."""

import os

import numpy as np
import pytest
from PIL import Image

from conftest import make_dataset, write_image
from transfer import data
from transfer.errors import DataError, ImageError
from transfer.data.images import BACKGROUND, load_image


def test_flat_layout_is_split_stratified_and_seeded(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=10)
    first = data.scan(root, val_split=0.2, seed=3)
    assert first.classes == ["blue", "green", "red"]
    assert first.split_source == "random"
    assert first.counts() == {"train": {"blue": 8, "green": 8, "red": 8}, "val": {"blue": 2, "green": 2, "red": 2}}
    again = data.scan(root, val_split=0.2, seed=3)
    assert [e.path for e in again.splits["val"]] == [e.path for e in first.splits["val"]]
    other = data.scan(root, val_split=0.2, seed=4)
    assert [e.path for e in other.splits["val"]] != [e.path for e in first.splits["val"]]


def test_rare_class_still_gets_a_validation_image(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=40, colours={"common": (0, 0, 0)})
    make_dataset(tmp_path / "d", per_class=2, colours={"rare": (255, 255, 255)})
    counts = data.scan(root, val_split=0.1).counts()
    assert counts["val"]["rare"] == 1 and counts["train"]["rare"] == 1
    assert counts["val"]["common"] == 4


@pytest.mark.parametrize("val_name", ["val", "validation"])
def test_split_folders(tmp_path, val_name):
    root = make_dataset(tmp_path / "d", splits={"train": 4, val_name: 2, "test": 1})
    ds = data.scan(root)
    assert ds.split_source == "folders"
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 12, "val": 6, "test": 3}


def test_train_folder_alone_is_split(tmp_path):
    root = make_dataset(tmp_path / "d", splits={"train": 5})
    ds = data.scan(root, val_split=0.2)
    assert ds.split_source == "random" and len(ds.splits["val"]) == 3


def test_class_order_is_sorted_and_nested_folders_belong_to_their_class(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=2)
    write_image(os.path.join(root, "blue", "deeper", "x.png"), (0, 0, 255))
    ds = data.scan(root)
    assert ds.classes == ["blue", "green", "red"]
    assert sum(ds.counts()[s]["blue"] for s in ds.splits) == 3


def test_junk_is_ignored(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=3)
    write_image(os.path.join(root, "__MACOSX", "red", "a.png"), (0, 0, 0))
    (tmp_path / "d" / "red" / "._001.png").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / "d" / "red" / "notes.txt").write_text("hello")
    (tmp_path / "d" / ".hidden").mkdir()
    ds = data.scan(root)
    assert ds.classes == ["blue", "green", "red"]
    assert sum(len(v) for v in ds.splits.values()) == 9


def test_val_classes_must_exist_in_train(tmp_path):
    root = make_dataset(tmp_path / "d", splits={"train": 2, "val": 1}, colours={"a": (0, 0, 0), "b": (1, 1, 1)})
    make_dataset(tmp_path / "d", splits={"val": 1}, colours={"zebra": (5, 5, 5)})
    with pytest.raises(DataError, match="train/ lacks: zebra"):
        data.scan(root)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.scan(str(tmp_path / "nope"))


def test_manifest_round_trip(tmp_path):
    root = make_dataset(tmp_path / "d", per_class=5)
    ds = data.scan(root)
    data.write_manifest(ds, str(tmp_path / "split.csv"))
    back = data.read_manifest(str(tmp_path / "split.csv"), root, ds.classes)
    assert {k: [(e.path, e.label) for e in v] for k, v in back.items()} == \
           {k: [(e.path, e.label) for e in v] for k, v in ds.splits.items()}


def test_decode_resizes_to_rgb_uint8(tmp_path):
    path = write_image(str(tmp_path / "a.png"), (200, 10, 10), size=40)
    image = load_image(path, (16, 24))
    assert image.shape == (16, 24, 3) and image.dtype == np.uint8
    assert image[..., 0].mean() > 150 and image[..., 2].mean() < 60


def test_decode_by_content_not_extension(tmp_path):
    path = write_image(str(tmp_path / "really_png.jpg"), (10, 200, 10), fmt="PNG")
    assert load_image(path, (8, 8))[..., 1].mean() > 150


def test_decode_applies_exif_orientation(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # left half white in the stored (landscape) pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.fromarray(pixels).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=95)
    image = load_image(str(tmp_path / "r.jpg"), (40, 20))  # displayed portrait: height 40, width 20
    assert image[:15].mean() > 200 and image[-15:].mean() < 50  # white half is now on top


def test_decode_composites_alpha_on_the_background(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert tuple(load_image(str(tmp_path / "t.png"), (8, 8))[0, 0]) == BACKGROUND


def test_decode_grayscale_and_palette(tmp_path):
    Image.new("L", (8, 8), 128).save(tmp_path / "g.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).convert("P").save(tmp_path / "p.gif")
    assert tuple(load_image(str(tmp_path / "g.png"), (4, 4))[0, 0]) == (128, 128, 128)
    assert tuple(load_image(str(tmp_path / "p.gif"), (4, 4))[0, 0]) == (0, 0, 255)


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"this is text", "not an image"),
    ("truncated", "corrupt or truncated"),
])
def test_decode_errors_have_reasons(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content == "truncated":
        write_image(str(tmp_path / "good.jpg"), (1, 2, 3), size=64, fmt="JPEG")
        content = (tmp_path / "good.jpg").read_bytes()[:300]
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_image(str(path), (8, 8))
