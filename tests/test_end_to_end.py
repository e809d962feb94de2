"""train -> predict -> export through the CLI, as a user runs it, and the SavedModel in a separate process."""

import csv
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cli import main
from conftest import COLOURS, make_dataset, write_image

pytestmark = pytest.mark.slow


def test_run_folder_has_everything(trained_run):
    run = trained_run["run"]
    for name in ("model.keras", "labels.txt", "config.json", "history.csv", "metrics.json", "split.csv",
                 "history.png"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert not os.path.exists(os.path.join(run, "best.weights.h5"))
    assert not os.path.exists(run + ".partial")
    record = json.load(open(os.path.join(run, "config.json")))
    assert record["model"]["labels"] == sorted(COLOURS)
    assert record["model"]["image_size"] == [32, 32] and record["model"]["preprocessing"] == "unit"
    assert record["config"]["backbone"] == "smallcnn" and record["config"]["fine_tune_epochs"] == 1
    assert open(os.path.join(run, "labels.txt")).read().split() == sorted(COLOURS)
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert metrics["epochs"]["fine_tune"] == 1 and metrics["val"]["images"] > 0
    phases = [row["phase"] for row in csv.DictReader(open(os.path.join(run, "history.csv")))]
    assert phases[-1] == "fine_tune" and phases[0] == "head"


def test_predict_folder_json_learns_the_colours(trained_run, runner, tmp_path):
    for i, (name, colour) in enumerate(COLOURS.items()):
        write_image(str(tmp_path / "new" / f"{name}.png"), colour, seed=999 + i)
    result = runner.invoke(main, ["predict", trained_run["run"], str(tmp_path / "new"), "--json", "--top-k", "2"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["errors"] == []
    by_file = {os.path.basename(p["path"]): p for p in out["predictions"]}
    assert {f: p["label"] for f, p in by_file.items()} == {f"{c}.png": c for c in COLOURS}
    assert all(len(p["top_k"]) == 2 and p["top_k"][0]["probability"] >= p["top_k"][1]["probability"]
               for p in out["predictions"])


def test_predict_reports_bad_files_and_predicts_the_rest(trained_run, runner, tmp_path):
    good = write_image(str(tmp_path / "in" / "good.png"), COLOURS["red"])
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a jpeg at all")
    result = runner.invoke(main, ["predict", trained_run["run"], str(tmp_path / "in"),
                                  str(tmp_path / "missing.png"), str(tmp_path / "*.none"), "--csv"])
    assert result.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    predicted = [r for r in rows if not r["error"]]
    assert [r["path"] for r in predicted] == [good] and predicted[0]["label"] == "red"
    errors = {os.path.basename(r["path"]): r["error"] for r in rows if r["error"]}
    assert errors == {"broken.jpg": "not an image, or a format Pillow cannot read",
                      "missing.png": "file not found", "*.none": "no files match"}


def test_predict_from_a_keras_file_and_a_glob(trained_run, runner):
    pattern = os.path.join(trained_run["data"], "red", "00*.png")
    result = runner.invoke(main, ["predict", os.path.join(trained_run["run"], "model.keras"), pattern])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 10 and all(line.split("\t")[1] == "red" for line in lines)


def test_export_serving_layout_and_separate_process_agrees(trained_run, runner, tmp_path):
    result = runner.invoke(main, ["export", trained_run["run"], "--output", str(tmp_path / "serving"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    version_dir = tmp_path / "serving" / "colours" / "1"
    assert info["path"] == str(version_dir) and info["version"] == 1
    assert (version_dir / "saved_model.pb").is_file()
    assert (tmp_path / "serving" / "colours" / "labels.txt").read_text().split() == sorted(COLOURS)

    import keras

    model = keras.saving.load_model(os.path.join(trained_run["run"], "model.keras"))
    images = np.random.default_rng(5).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "images.npy", images)
    code = (
        "import json, sys, numpy as np, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "f = m.signatures['predict_images']\n"
        "inputs = list(f.structured_input_signature[1])\n"
        "out = f(image=tf.constant(np.load(sys.argv[2])))\n"
        "print(json.dumps({'inputs': inputs, 'outputs': list(out), 'p': out['probabilities'].numpy().tolist()}))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(version_dir), str(tmp_path / "images.npy")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    served = json.loads(proc.stdout.strip().splitlines()[-1])
    assert served["inputs"] == ["image"] and sorted(served["outputs"]) == ["classes", "probabilities", "scores"]
    np.testing.assert_allclose(np.array(served["p"]), model.predict_on_batch(images), atol=1e-5)

    again = runner.invoke(main, ["export", trained_run["run"], "--output", str(tmp_path / "serving"), "--json"])
    assert json.loads(again.stdout)["version"] == 2

    predicted = runner.invoke(main, ["predict", str(tmp_path / "serving" / "colours"),
                                     os.path.join(trained_run["data"], "green"), "--json"])
    assert predicted.exit_code == 0, predicted.output
    labels = [p["label"] for p in json.loads(predicted.stdout)["predictions"]]
    assert labels and set(labels) == {"green"}


def test_registry_backbone_both_phases_and_overwrite(runner, tmp_path, colours_dir):
    args = ["train", colours_dir, "--backbone", "mobilenetv2", "--weights", "none", "--image-size", "32",
            "--epochs", "1", "--fine-tune-epochs", "1", "--batch-size", "8", "-o", str(tmp_path / "models"),
            "--name", "mnv2", "--quiet", "--json"]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["metrics"]["epochs"] == {"head": 1, "fine_tune": 1}
    before = os.path.getmtime(tmp_path / "models" / "mnv2" / "model.keras")

    refused = runner.invoke(main, args)
    assert refused.exit_code == 1 and "already exists" in refused.output
    assert os.path.getmtime(tmp_path / "models" / "mnv2" / "model.keras") == before

    replaced = runner.invoke(main, args + ["--overwrite", "--epochs", "2"])
    assert replaced.exit_code == 0, replaced.output
    assert json.loads(replaced.stdout)["metrics"]["epochs"]["head"] == 2
    assert sorted(os.listdir(tmp_path / "models")) == ["mnv2"]


def test_split_folders_with_test_set_are_evaluated(runner, tmp_path):
    data = make_dataset(tmp_path / "d", splits={"train": 6, "validation": 2, "test": 2})
    result = runner.invoke(main, ["train", data, "--backbone", "lenet5", "--epochs", "1", "-o", str(tmp_path / "m"),
                                  "--name", "r", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["test"]["images"] == 6 and metrics["val"]["images"] == 6
    rows = list(csv.DictReader(open(tmp_path / "m" / "r" / "split.csv")))
    assert {r["split"] for r in rows} == {"train", "val", "test"} and len(rows) == 30


def test_names_that_would_escape_their_folder_are_refused(trained_run, runner, colours_dir, tmp_path):
    bad = runner.invoke(main, ["train", colours_dir, "--backbone", "lenet5", "--name", "../evil", "-o", str(tmp_path)])
    assert bad.exit_code == 1 and "plain folder name" in bad.output
    bad = runner.invoke(main, ["export", trained_run["run"], "--name", "../../evil", "-o", str(tmp_path / "s")])
    assert bad.exit_code == 1 and "plain folder name" in bad.output


def test_predict_handles_a_file_name_that_is_not_utf8(trained_run, runner, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    raw = os.path.join(os.fsencode(str(folder)), b"caf\xe9.png")
    write_image(os.fsdecode(raw), COLOURS["blue"])
    result = runner.invoke(main, ["predict", trained_run["run"], str(folder)])
    assert result.exit_code == 0, result.output
    path, label = result.stdout.strip().split("\t")[:2]
    assert path.endswith("caf\\xe9.png") and label == "blue"
