"""``transfer train --config FILE`` (issue 16): JSON and TOML, defaults < preset < file < command line, unknown
keys named, and a run's config.json trains the same run again."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from cli import main
from conftest import make_dataset
from transfer import configfile, runs
from transfer.config import default
from transfer.errors import ConfigError
from transfer.presets import PRESETS


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_json_and_toml_give_the_same_settings(tmp_path):
    toml = _write(tmp_path / "train.toml", 'backbone = "smallcnn"\nfine-tune-epochs = 0\ndense = [64, 16]\nlr = 0.01\n'
                                           'tta = true\n')
    as_json = _write(tmp_path / "train.json", json.dumps({"backbone": "smallcnn", "fine_tune_epochs": 0,
                                                          "dense": [64, 16], "lr": 0.01, "tta": True}))
    expected = {"backbone": "smallcnn", "fine_tune_epochs": 0, "dense": (64, 16), "lr": 0.01, "tta": True}
    assert configfile.load(toml) == configfile.load(as_json) == expected


def test_order_defaults_preset_file_command_line():
    preset = PRESETS["small-data-transfer"]
    file = {"epochs": 3, "dropout": 0.5, "batch_size": 16}
    config = configfile.merge("small-data-transfer", file, {"batch_size": 4, "data_dir": "photos"})
    assert config.batch_size == 4  # the command line over the file
    assert (config.epochs, config.dropout) == (3, 0.5) != (preset["epochs"], preset["dropout"])  # the file over the preset
    assert config.tta is True and default("tta") is False  # the preset over the defaults
    assert config.l2 == default("l2") and config.preset == "small-data-transfer"


def test_the_files_preset_applies_unless_the_command_line_names_one():
    file = {"preset": "small-data-scratch", "epochs": 2}
    from_file = configfile.merge(None, file, {})
    assert (from_file.preset, from_file.backbone, from_file.epochs) == ("small-data-scratch", "smallvgg", 2)
    typed = configfile.merge("small-data-transfer", file, {})
    assert (typed.preset, typed.backbone, typed.epochs) == ("small-data-transfer", "efficientnet_lite0", 2)


def test_unknown_keys_are_named_with_the_nearest_setting(tmp_path):
    path = _write(tmp_path / "bad.toml", 'epochs = 2\nlearning_rate = 0.1\nfine_tune_epoch = 1\nzzz = 1\n')
    with pytest.raises(ConfigError) as error:
        configfile.load(path)
    message = str(error.value)
    assert "bad.toml" in message and "unknown settings" in message
    assert "learning_rate" in message and "fine_tune_epoch (did you mean fine_tune_epochs?)" in message
    assert "zzz" in message and "epochs," not in message


@pytest.mark.parametrize("text, fragment", [
    ('{"epochs": 2.5}', "--epochs must be a whole number"), ('{"optimizer": "adamm"}', "--optimizer must be one of"),
    ('{"epochs": 2,}', "is not valid JSON"), ('[1, 2]', "expected settings by name"),
])
def test_bad_values_and_syntax_name_the_file(tmp_path, text, fragment):
    path = _write(tmp_path / "bad.json", text)
    with pytest.raises(ConfigError, match="bad.json") as error:
        configfile.load(path)
    assert fragment in str(error.value)


def test_a_run_record_is_read_without_its_name(tmp_path):
    record = {"format": runs.FORMAT_VERSION, "created": "2026-01-01T00:00:00",
              "config": {"data_dir": "/data", "name": "old-run", "overwrite": True, "epochs": 4}, "model": {}}
    path = _write(tmp_path / "config.json", json.dumps(record))
    assert configfile.load(path) == {"data_dir": "/data", "epochs": 4}


def _error(result, *fragments):
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_cli_errors(tmp_path):
    runner = CliRunner()
    bad = _write(tmp_path / "bad.toml", "epoch = 2\n")
    _error(runner.invoke(main, ["train", str(tmp_path), "--config", bad]), "unknown setting epoch", "epochs")
    no_data = _write(tmp_path / "no_data.toml", "epochs = 2\n")
    _error(runner.invoke(main, ["train", "--config", no_data]), "DATA_DIR is required", "--config")
    missing = _write(tmp_path / "missing.toml", f'data_dir = "{tmp_path / "nope"}"\nbackbone = "smallcnn"\n')
    _error(runner.invoke(main, ["train", "--config", missing, "-o", str(tmp_path / "m")]), "nope", "does not exist")


@pytest.fixture(scope="module")
def from_toml(tmp_path_factory):
    """A run trained from a TOML file that gives DATA_DIR, with one of its settings overridden on the command line."""
    tmp = tmp_path_factory.mktemp("configfile")
    data = make_dataset(tmp / "colours", per_class=6)
    toml = _write(tmp / "train.toml", "\n".join([
        f'data_dir = "{data}"', 'backbone = "smallcnn"', "image_size = 32", "epochs = 3", "batch_size = 6",
        'augment = "none"', "dense = [16]", f'output_dir = "{tmp / "models"}"', f'cache_dir = "{tmp / "cache"}"', ""]))
    result = CliRunner().invoke(main, ["train", "--config", toml, "--epochs", "1", "--name", "first", "--quiet"])
    assert result.exit_code == 0, result.output
    return {"tmp": tmp, "data": data, "run": str(tmp / "models" / "first")}


def _config(run: str) -> dict:
    with open(os.path.join(run, runs.CONFIG_FILE)) as f:
        return json.load(f)["config"]


def test_the_command_line_wins_over_the_file(from_toml):
    config = _config(from_toml["run"])
    assert config["epochs"] == 1  # typed
    assert (config["batch_size"], config["dense"], config["image_size"]) == (6, [16], 32)  # from the file
    assert config["data_dir"] == from_toml["data"] and config["lr"] == default("lr")


def test_a_runs_config_json_trains_the_same_run_again(from_toml):
    """The JSON of a finished run, as --config and with no DATA_DIR, gives the same settings under a new name."""
    result = CliRunner().invoke(main, ["train", "--config", os.path.join(from_toml["run"], runs.CONFIG_FILE),
                                       "--name", "again", "--quiet"])
    assert result.exit_code == 0, result.output
    first, again = _config(from_toml["run"]), _config(str(from_toml["tmp"] / "models" / "again"))
    assert (first.pop("name"), again.pop("name")) == ("first", "again")
    assert first == again
