"""--backbone PATH: transfer from a run folder or any .keras model (how we test transfer without ImageNet)."""

import json
import os

import keras
import numpy as np
import pytest

from cli import main
from conftest import make_dataset
from transfer import backbones
from transfer.config import TrainConfig
from transfer.errors import ConfigError
from transfer.heads import backbone_of, build_model

NEW_CLASSES = {"cyan": (0, 220, 220), "magenta": (220, 0, 220), "orange": (250, 140, 0), "white": (240, 240, 240)}


def _build(path, **overrides):
    spec, config = backbones.resolve(TrainConfig(data_dir="x", backbone=path, augment="none", **overrides).validate())
    return spec, config, build_model(spec, config, num_classes=len(NEW_CLASSES))


def _conv_weights(model):
    return [w for layer in model.layers if isinstance(layer, keras.layers.Conv2D) for w in layer.get_weights()]


def test_run_folder_as_backbone_keeps_conv_weights_and_preprocessing(trained_run):
    source = keras.saving.load_model(os.path.join(trained_run["run"], "model.keras"))
    spec, config, model = _build(trained_run["run"])
    assert spec.kind == "model" and spec.preprocessing == "unit" and config.image_size == 32
    old, new = _conv_weights(backbone_of(source)), _conv_weights(backbone_of(model))
    assert len(old) == len(new) == 6
    for a, b in zip(old, new):
        np.testing.assert_array_equal(a, b)
    assert model.output_shape == (None, len(NEW_CLASSES))
    assert model.get_layer("head").get_layer("probabilities").units == len(NEW_CLASSES)
    assert not any(isinstance(layer, keras.layers.Dense) for layer in backbone_of(model).layers), "old head kept"


def test_plain_keras_file_is_cut_at_its_last_pooling(tmp_path):
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="own_rescaling")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c1")(x)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="c2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="old_head")(x)
    path = str(tmp_path / "inhouse.keras")
    keras.Model(inputs, outputs).save(path)

    spec, config, model = _build(path, pooling="max")
    names = [layer.name for layer in backbone_of(model).layers]
    assert "own_rescaling" in names and "c2" in names and "gap" not in names and "old_head" not in names
    np.testing.assert_array_equal(backbone_of(model).get_layer("c1").get_weights()[0],
                                  keras.saving.load_model(path).get_layer("c1").get_weights()[0])
    assert model.output_shape == (None, len(NEW_CLASSES))


def test_model_backbones_refuse_weights_and_size(trained_run):
    with pytest.raises(ConfigError, match="brings its own weights"):
        _build(trained_run["run"], image_size=64)
    with pytest.raises(ConfigError, match="neither a registry name"):
        backbones.get(os.path.join(trained_run["run"], "labels.txt"))


def test_train_from_a_run_folder_through_the_cli(trained_run, runner, tmp_path):
    data = make_dataset(tmp_path / "new", per_class=5, colours=NEW_CLASSES)
    result = runner.invoke(main, ["train", data, "--backbone", trained_run["run"], "--epochs", "1",
                                  "--fine-tune-epochs", "1", "-o", str(tmp_path / "m"), "--name", "t", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["labels"] == sorted(NEW_CLASSES)
    assert summary["metrics"]["epochs"] == {"head": 1, "fine_tune": 1}
    record = json.loads((tmp_path / "m" / "t" / "config.json").read_text())
    assert record["config"]["backbone"] == os.path.abspath(trained_run["run"])
    assert record["config"]["weights"] == "model" and record["model"]["preprocessing"] == "unit"


@pytest.mark.slow
def test_a_scratch_net_learns_an_easy_task(tmp_path):
    """Guards against silent breakage of training: >= 90% on a generated 3-class set in a few epochs."""
    from transfer.training import train

    data = make_dataset(tmp_path / "easy", per_class=20)
    result = train(TrainConfig(data_dir=data, backbone="smallcnn", image_size=32, epochs=6, augment="none",
                               batch_size=8, lr=0.003, output_dir=str(tmp_path / "m"), name="easy", verbose=0))
    assert result.metrics["val"]["accuracy"] >= 0.9
