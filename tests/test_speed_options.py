"""--mixed-precision and --jit, on a CPU: the plumbing and the global state they touch."""

import json
import os

import keras
import numpy as np
import pytest

from cli import main
from conftest import make_dataset
from transfer import training
from transfer.config import TrainConfig
from transfer.errors import ConfigError


def _train(tmp_path, **overrides):
    data = make_dataset(tmp_path / "data", per_class=4, size=32)
    options = dict(data_dir=data, backbone="smallcnn", image_size=32, augment="none", batch_size=4, epochs=1,
                   output_dir=str(tmp_path / "models"), name="run", verbose=0, cache_dir=str(tmp_path / "cache"))
    options.update(overrides)
    return training.train(TrainConfig(**options))


@pytest.mark.parametrize("mode, gpu, expected", [("on", False, "mixed_float16"), ("auto", True, "mixed_float16"),
                                                 ("auto", False, "float32"), ("off", True, "float32")])
def test_policy_is_set_for_the_run_and_restored_after(monkeypatch, mode, gpu, expected):
    monkeypatch.setattr(training.precision, "has_gpu", lambda: gpu)
    with training.dtype_policy(mode):
        assert keras.mixed_precision.global_policy().name == expected
    assert keras.mixed_precision.global_policy().name == "float32"


def test_policy_is_restored_when_training_fails(tmp_path):
    with pytest.raises(ConfigError):
        _train(tmp_path, mixed_precision="on", epochs=0, fine_tune_epochs=0)
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_mixed_precision_trains_with_a_float32_softmax(tmp_path):
    result = _train(tmp_path, mixed_precision="on")
    assert keras.mixed_precision.global_policy().name == "float32"
    backbone = result.model.get_layer("backbone")
    assert any(layer.dtype_policy.name == "mixed_float16" for layer in backbone.layers if layer.weights)
    assert result.model.output.dtype == "float32"
    probabilities = result.model.predict(np.full((2, 32, 32, 3), 128, np.float32), verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    with open(os.path.join(result.run_dir, "config.json")) as f:
        assert json.load(f)["config"]["mixed_precision"] == "on"


@pytest.mark.slow
def test_config_json_records_the_precision_auto_chose(tmp_path):
    result = _train(tmp_path, mixed_precision="auto", epochs=1)
    with open(os.path.join(result.run_dir, "config.json")) as f:
        assert json.load(f)["config"]["mixed_precision"] == "off"  # no GPU here; "auto" would say nothing


@pytest.mark.slow
def test_jit_compiles_training_with_xla(tmp_path, monkeypatch):
    compiled = []
    original = keras.Model.compile
    monkeypatch.setattr(keras.Model, "compile",
                        lambda self, **kw: compiled.append(kw["jit_compile"]) or original(self, **kw))
    result = _train(tmp_path, jit=True)
    assert compiled and all(compiled)
    assert np.isfinite(result.metrics["val"]["loss"])


def test_cli_passes_the_speed_options(runner, tmp_path, monkeypatch):
    seen = {}

    def fake_train(config, **options):
        seen.update(config.to_dict())
        raise ConfigError("stop here")

    monkeypatch.setattr(training, "train", fake_train)
    data = make_dataset(tmp_path / "data", per_class=2, size=16)
    result = runner.invoke(main, ["train", data, "--backbone", "smallcnn", "--cache-features", "off",
                                  "--mixed-precision", "on", "--jit"])
    assert "Error: stop here" in result.output
    assert (seen["cache_features"], seen["mixed_precision"], seen["jit"]) == ("off", "on", True)
