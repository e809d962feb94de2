"""`transfer doctor`: planted label flips, near-duplicates and an outlier are found in a generated folder (and the
clean files are not flagged); its JSON, CSV files, contact sheet and report; `train --exclude`; and clear errors for
folders it cannot check. Nothing in the dataset is ever changed."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main
from conftest import make_dataset
from test_report import chromium, needs_chromium, not_blank

#: three classes a pretrained backbone tells apart at once: colours, each image a smooth pattern of its own
TINTS = {"amber": (230, 150, 20), "navy": (20, 30, 160), "teal": (20, 170, 150)}
PER_CLASS = 12


def pattern(tint, seed, size=96):
    """A smooth random pattern (as photos are smooth) around one tint: distinct images share no structure."""
    rng = np.random.default_rng(seed)
    coarse = 0.7 * np.array(tint, np.float64) + rng.uniform(0, 70, (5, 5, 3))
    return Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.BICUBIC)


def near_copy(image):
    """Cropped by 4 %, scaled to 0.8 and re-encoded as JPEG q70, as the issue's check makes them."""
    w, h = image.size
    d = round(0.02 * w)
    return image.crop((d, d, w - d, h - d)).resize((round(0.8 * (w - 2 * d)), round(0.8 * (h - 2 * d))))


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """A folder with 2 flipped labels, one planted near-duplicate pair and one photo that is none of the classes;
    doctor run once through the CLI with --json and -o."""
    root = tmp_path_factory.mktemp("doctor")
    data = root / "data"
    names = list(TINTS)
    flipped = {("amber", 3): "navy", ("teal", 5): "amber"}
    for c, (name, tint) in enumerate(TINTS.items()):
        for i in range(PER_CLASS):
            given = flipped.get((name, i), name)
            (data / given).mkdir(parents=True, exist_ok=True)
            pattern(tint, 100 * c + i).save(data / given / f"{name[0]}{i:02d}.jpg", quality=90)
    near_copy(Image.open(data / "navy" / "n04.jpg")).save(data / "navy" / "copy.jpg", quality=70)
    odd = np.zeros((96, 96, 3), np.uint8)
    odd[::8] = 255  # white stripes on black: far from every class
    Image.fromarray(odd).save(data / "teal" / "stripes.png")
    before = snapshot(data)
    out = root / "checkup"
    result = CliRunner().invoke(main, ["doctor", str(data), "-o", str(out), "--json", "--cache-dir",
                                       str(root / "cache"), "--folds", "4"])
    assert result.exit_code == 0, result.output
    return {"data": data, "out": out, "record": json.loads(result.stdout), "before": before, "names": names,
            "flipped": {f"{given}/{name[0]}{i:02d}.jpg" for (name, i), given in flipped.items()}, "root": root}


def snapshot(folder) -> dict[str, str]:
    """Every file under ``folder`` and the sha256 of its bytes."""
    found = {}
    for parent, _, files in os.walk(folder):
        for f in files:
            path = os.path.join(parent, f)
            found[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return found


def test_the_flipped_labels_are_found_and_no_clean_file_is_flagged(planted):
    issues = planted["record"]["label_issues"]
    assert planted["flipped"] <= {i["path"] for i in issues} <= planted["flipped"] | {"teal/stripes.png"}
    by_path = {i["path"]: i for i in issues}
    assert by_path["navy/a03.jpg"]["suggested"] == "amber" and by_path["amber/t05.jpg"]["suggested"] == "teal"
    scores = [i["score"] for i in issues]
    assert scores == sorted(scores, reverse=True) and all(0.5 < s <= 1 for s in scores)


def test_the_planted_near_duplicate_is_one_group_and_nothing_else_is(planted):
    groups = planted["record"]["near_duplicates"]
    assert [sorted(g["paths"]) for g in groups] == [["navy/copy.jpg", "navy/n04.jpg"]]
    assert groups[0]["kind"] == "redundant copies" and 0.96 <= groups[0]["similarity"] <= 1


def test_the_photo_of_no_class_is_an_outlier(planted):
    assert [o["path"] for o in planted["record"]["outliers"]] == ["teal/stripes.png"]


def test_json_schema(planted):
    record = planted["record"]
    assert set(record) >= {"label_issues", "near_duplicates", "outliers"}
    for issue in record["label_issues"]:
        assert set(issue) == {"path", "given", "suggested", "score"}
        assert not os.path.isabs(issue["path"]) and isinstance(issue["score"], float)
    for group in record["near_duplicates"]:
        assert isinstance(group["paths"], list) and isinstance(group["similarity"], float)
    for row in record["outliers"]:
        assert {"path", "given", "nearest", "similarity", "score"} <= set(row)
    assert record["images"] == 3 * PER_CLASS + 2 and record["output"] == str(planted["out"])


def test_nothing_in_the_dataset_is_moved_or_changed(planted):
    assert snapshot(planted["data"]) == planted["before"]


def test_csv_files_contact_sheet_and_report(planted):
    out = planted["out"]
    with open(out / "label_issues.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [i["path"] for i in planted["record"]["label_issues"]]
    assert set(rows[0]) == {"path", "given", "suggested", "score"}
    with open(out / "near_duplicates.csv", newline="") as f:
        assert {r["path"] for r in csv.DictReader(f)} == {"navy/copy.jpg", "navy/n04.jpg"}
    assert not_blank(str(out / "suspects.png"))
    text = (out / "report.html").read_text()
    for heading in ("Suspected label issues", "Near-duplicate groups", "Outliers"):
        assert heading in text
    assert "navy/a03.jpg" in text and "teal/stripes.png" in text


@needs_chromium
def test_report_renders_in_headless_chromium(planted, tmp_path):
    page = "file://" + str(planted["out"] / "report.html")
    dom = chromium("--dump-dom", page, cwd=tmp_path).stdout
    assert re.search(r"<title>(.*?)</title>", dom).group(1) == "transfer doctor: data"
    assert "amber/t05.jpg" in dom
    shot = tmp_path / "doctor.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,1600", page, cwd=tmp_path)
    assert not_blank(str(shot))


def test_a_second_run_reads_the_features_from_the_cache_and_replaces_its_own_output(planted, caplog):
    caplog.set_level("INFO", logger="transfer")
    result = CliRunner().invoke(main, ["doctor", str(planted["data"]), "-o", str(planted["out"]), "--cache-dir",
                                       str(planted["root"] / "cache"), "--folds", "4"])
    assert result.exit_code == 0, result.output
    assert "features: 38 from the cache, 0 computed" in caplog.text
    issues = len(planted["record"]["label_issues"])
    assert re.search(rf"label issues\s+{issues}\n", result.stdout) and f"written: {planted['out']}" in result.stdout


def test_a_train_after_doctor_takes_the_image_view_of_its_features_without_running_the_backbone(planted, tmp_path,
                                                                                                  caplog):
    """doctor caches each image and its mirror image; Lite0's train caches the image alone, and reads it there."""
    from transfer import TrainConfig, train

    caplog.set_level("INFO", logger="transfer")
    result = train(TrainConfig(data_dir=str(planted["data"]), cache_dir=str(planted["root"] / "cache"), epochs=1,
                               fine_tune="off", output_dir=str(tmp_path / "models"), verbose=0))
    assert (result.config.backbone, result.config.augment) == ("efficientnet_lite0", "none")
    assert re.search(r"feature cache \S+: 38 image\(s\) from the cache, 0 computed", caplog.text), caplog.text
    rows = {np.load(f).shape for f in glob.glob(str(planted["root"] / "cache" / "features" / "*" / "*.npy"))}
    assert rows == {(2, 1280), (1, 1280)}  # doctor's views, and train's


def test_train_exclude_leaves_out_the_listed_files_and_records_them(planted, tmp_path):
    issues = planted["out"] / "label_issues.csv"
    result = CliRunner().invoke(main, [
        "train", str(planted["data"]), "--exclude", str(issues), "--backbone", "smallcnn", "--image-size", "32",
        "--epochs", "1", "--fine-tune-epochs", "0", "-o", str(tmp_path), "--name", "clean", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "clean"
    listed = [i["path"] for i in planted["record"]["label_issues"]]
    record = json.loads((run / "config.json").read_text())
    assert record["config"]["exclude"] == listed and record["data"]["audit"]["excluded"] == len(listed)
    with open(run / "split.csv", newline="") as f:
        used = {r["path"] for r in csv.DictReader(f)}
    assert len(used) == 3 * PER_CLASS + 2 - len(listed) and not used & set(listed)
    assert "left out by --exclude" in (run / "report.html").read_text()


def test_exclude_naming_files_that_are_not_there_is_one_clear_error(planted, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("navy/a03.jpg\nnavy/missing.jpg\nelsewhere/x.jpg\n")
    result = CliRunner().invoke(main, ["train", str(planted["data"]), "--exclude", str(listing), "--backbone",
                                       "smallcnn", "-o", str(tmp_path)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "--exclude lists 2 file(s) that are not images" in result.output
    assert "'elsewhere/x.jpg', 'navy/missing.jpg'" in result.output


@pytest.mark.parametrize("layout, message", [
    ({}, "needs at least 2 class folders (one per class) with images; found none"),
    ({"only": 5}, "found only 'only'"),
    ({"one": 1, "two": 4}, "class 'one' has 1 image; at least 2 are needed"),
])
def test_folders_doctor_cannot_check_get_one_clear_error(layout, message, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name, n in layout.items():
        make_dataset(data, per_class=n, colours={name: (200, 10, 10)})
    result = CliRunner().invoke(main, ["doctor", str(data), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.startswith("Error:") and message in result.output


def test_output_inside_the_dataset_is_refused_before_any_work(planted):
    before = snapshot(planted["data"])
    result = CliRunner().invoke(main, ["doctor", str(planted["data"]), "-o", str(planted["data"] / "report")])
    assert result.exit_code == 1 and "inside the dataset folder" in result.output
    assert snapshot(planted["data"]) == before


def test_a_from_scratch_backbone_is_refused(planted):
    result = CliRunner().invoke(main, ["doctor", str(planted["data"]), "--backbone", "smallcnn"])
    assert result.exit_code == 1 and "needs a pretrained backbone" in result.output


def test_without_cleanlab_it_says_how_to_install_it(planted, monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)
    result = CliRunner().invoke(main, ["doctor", str(planted["data"])])
    assert result.exit_code == 1 and "pip install 'transfer[doctor]'" in result.output
