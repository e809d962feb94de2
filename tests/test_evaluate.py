"""`transfer evaluate`: metrics and files on any labeled folder, through the audit, with clear errors."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from cli import main
from conftest import COLOURS, make_dataset, write_image
from test_hardening import cli, failed, succeeded
from transfer import runs
from transfer.reports.evaluate import evaluate

FILES = ("evaluation.json", "confusion_matrix.png", "misclassified.csv", "top_losses.png", "report.html")


def not_blank(path) -> bool:
    return np.asarray(Image.open(path).convert("RGB"), np.float64).var() > 0


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    """The colours, with a red image filed under blue/ (a sure mistake) and a corrupt file."""
    root = tmp_path_factory.mktemp("labeled")
    data = make_dataset(root / "photos", per_class=4, seed=7)
    write_image(os.path.join(data, "blue", "really-red.png"), COLOURS["red"], seed=99)
    with open(os.path.join(data, "green", "broken.png"), "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return data


@pytest.fixture(scope="module")
def evaluated(trained_run, labeled):
    run = os.path.join(os.path.dirname(labeled), "run")
    shutil.copytree(trained_run["run"], run)
    return run, evaluate(run, labeled)


def test_writes_every_file_into_the_run(evaluated, labeled):
    run, result = evaluated
    assert result.path == os.path.join(run, "evaluations", "photos")
    assert sorted(f for f in os.listdir(result.path) if not f.startswith(".")) == sorted(FILES)
    for png in ("confusion_matrix.png", "top_losses.png"):
        assert not_blank(os.path.join(result.path, png))
    record = json.load(open(os.path.join(result.path, "evaluation.json")))
    assert record["metrics"]["images"] == 13 and record["split"] == "all"
    assert [s["path"] for s in record["skipped"]] == [os.path.join("green", "broken.png")]
    assert runs.replace_problem(run) is None  # --overwrite may still replace the run: its evaluations go with it
    report = open(os.path.join(result.path, "report.html"), encoding="utf-8").read()
    assert "Grad-CAM examples" in report and "really-red.png: true blue, predicted red" in report  # the worst error


def test_misclassified_csv_is_sorted_by_loss_and_holds_the_planted_mistake(evaluated):
    _, result = evaluated
    with open(os.path.join(result.path, "misclassified.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and rows[0]["file"] == os.path.join("blue", "really-red.png")
    assert (rows[0]["true"], rows[0]["predicted"]) == ("blue", "red")
    loss = [float(r["loss"]) for r in rows]
    assert loss == sorted(loss, reverse=True) and all(r["true"] != r["predicted"] for r in rows)
    assert np.exp(-loss[0]) == pytest.approx(float(rows[0]["true_probability"]), abs=1e-6)  # loss = -log p(true)
    per_class = result.metrics["per_class"]
    assert per_class["blue"]["support"] == 5 and per_class["blue"]["recall"] <= 0.8


def test_evaluating_again_replaces_its_own_output_but_never_a_users_folder(evaluated, labeled, tmp_path):
    run, result = evaluated
    assert evaluate(run, labeled).path == result.path
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(runs.RunError, match="not an evaluation folder of transfer"):
        evaluate(run, labeled, output=str(mine))
    assert (mine / "notes.txt").read_text() == "keep"
    (tmp_path / "new.partial").mkdir()  # where an evaluation into new/ is staged: not ours, so not removed
    with pytest.raises(runs.RunError, match="new.partial"):
        evaluate(run, labeled, output=str(tmp_path / "new"))
    assert os.path.isdir(tmp_path / "new.partial")
    with pytest.raises(runs.RunError, match="inside the dataset folder"):
        evaluate(run, labeled, output=os.path.join(labeled, "out"))


def test_cli_table_json_and_a_keras_file_writes_to_the_working_folder(evaluated, labeled, tmp_path, runner,
                                                                      monkeypatch):
    run, _ = evaluated
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(main, ["evaluate", os.path.join(run, "model.keras"), labeled, "--quiet"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "macro average" in result.output and "weighted average" in result.output
    assert os.path.isfile(tmp_path / "evaluation-photos" / "report.html")
    result = runner.invoke(main, ["evaluate", run, labeled, "--json", "-o", str(tmp_path / "j")])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["output"] == str(tmp_path / "j") and record["metrics"]["top_k"] == 2


def test_split_layout_defaults_to_test_and_split_picks_another(trained_run, tmp_path, runner):
    data = make_dataset(tmp_path / "splits", splits={"train": 2, "val": 3, "test": 4})
    result = runner.invoke(main, ["evaluate", trained_run["run"], data, "--json", "-o", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["images"] == 12
    result = runner.invoke(main, ["evaluate", trained_run["run"], data, "--split", "validation", "--json",
                                  "-o", str(tmp_path / "b")])
    assert json.loads(result.stdout)["metrics"]["images"] == 9
    result = runner.invoke(main, ["evaluate", trained_run["run"], data, "--split", "holdout"])
    assert result.exit_code == 1 and "--split holdout" in result.output and "test/" in result.output
    assert runner.invoke(main, ["evaluate", trained_run["run"]]).exit_code == 2  # usage: DATA_DIR missing


def test_a_class_missing_from_the_folder_is_an_error_unless_allowed(trained_run, tmp_path, runner):
    data = make_dataset(tmp_path / "two", per_class=2, colours={"red": COLOURS["red"], "blue": COLOURS["blue"]})
    result = runner.invoke(main, ["evaluate", trained_run["run"], data, "-o", str(tmp_path / "a")])
    assert result.exit_code == 1 and "'green'" in result.output and "--allow-missing-classes" in result.output
    result = runner.invoke(main, ["evaluate", trained_run["run"], data, "--allow-missing-classes", "--json",
                                  "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    green = json.loads(result.stdout)["metrics"]["per_class"]["green"]
    assert green["support"] == 0 and green["recall"] == 0.0


def test_cli_with_a_corrupt_file_and_an_unknown_class(trained_run, labeled, tmp_path):
    data = tmp_path / "photos"
    shutil.copytree(labeled, data)
    proc = succeeded(cli("evaluate", trained_run["run"], data, "-o", tmp_path / "out"))
    assert "skipped green/broken.png" in proc.stderr and "accuracy" in proc.stdout
    write_image(str(data / "purple" / "0.png"), (128, 0, 128))
    proc = cli("evaluate", trained_run["run"], data, "-o", tmp_path / "out2")
    failed(proc, "classes that the model does not know", "'purple'")
    assert "skipped" not in proc.stderr  # refused before the audit read the files
    assert not os.path.exists(tmp_path / "out2")


def test_an_exported_savedmodel_gives_the_same_metrics(evaluated, labeled, tmp_path):
    from transfer import export

    run, from_run = evaluated
    exported = export(run, output=str(tmp_path / "serving"))
    result = evaluate(exported.path, labeled, output=str(tmp_path / "out"))
    assert result.record["model_kind"] == "savedmodel"
    assert result.metrics["confusion_matrix"] == from_run.metrics["confusion_matrix"]
    assert result.metrics["log_loss"] == pytest.approx(from_run.metrics["log_loss"], rel=1e-4)
