"""Presets are data, explicit options win over them, and the cosine schedule trains."""

import json

import pytest

from cli import main
from conftest import make_dataset
from transfer import backbones
from transfer.errors import ConfigError
from transfer.presets import PRESETS, apply_preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_are_valid_configs(name):
    config = apply_preset(name, {"data_dir": "x"}).validate()
    spec, resolved = backbones.resolve(config)
    assert resolved.preset == name and spec.name == config.backbone


def test_explicit_settings_win_over_the_preset():
    config = apply_preset("small-data-scratch", {"data_dir": "x", "epochs": 3, "image_size": 64})
    assert (config.epochs, config.image_size, config.backbone, config.tta) == (3, 64, "smallvgg", True)
    with pytest.raises(ConfigError, match="--preset must be one of"):
        apply_preset("nope", {})


@pytest.mark.slow
def test_cli_preset_with_an_override_and_the_cosine_schedule(runner, tmp_path):
    data = make_dataset(tmp_path / "d", per_class=6)
    result = runner.invoke(main, ["train", data, "--preset", "small-data-scratch", "--epochs", "2",
                                  "--image-size", "32", "-o", str(tmp_path / "m"), "--name", "p", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "m" / "p" / "config.json").read_text())["config"]
    assert record["preset"] == "small-data-scratch" and record["backbone"] == "smallvgg"
    assert (record["epochs"], record["image_size"], record["lr_schedule"]) == (2, 32, "cosine")
    assert json.loads(result.stdout)["metrics"]["epochs"]["head"] == 2
