"""A .keras file that would run Python code as it loads is refused unless the user says --unsafe."""

import os

import numpy as np

from cli import main
from conftest import COLOURS, write_image


def _lambda_model(folder):
    """A model with a Lambda layer (arbitrary Python code, serialized as bytecode), labels beside it."""
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    path = os.path.join(folder, "lambda.keras")
    keras.Model(inputs, outputs).save(path)
    with open(os.path.join(folder, "labels.txt"), "w") as f:
        f.write("a\nb\n")
    return path


def test_a_lambda_model_is_refused_in_safe_mode_and_loads_with_unsafe(runner, tmp_path):
    model = _lambda_model(str(tmp_path))
    image = write_image(str(tmp_path / "x.png"), COLOURS["red"])
    refused = runner.invoke(main, ["predict", model, image])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    assert "Lambda layer" in refused.output and "--unsafe" in refused.output
    exported = runner.invoke(main, ["export", model, "-o", str(tmp_path / "serving")])
    assert exported.exit_code == 1 and "--unsafe" in exported.output
    assert not os.path.exists(tmp_path / "serving" / "lambda")
    loaded = runner.invoke(main, ["predict", model, image, "--unsafe", "--json"])
    assert loaded.exit_code == 0, loaded.output
    assert '"label": "a"' in loaded.stdout or '"label": "b"' in loaded.stdout


def test_runs_of_transfer_load_in_safe_mode(trained_run):
    from transfer.runners import load_model

    loaded = load_model(trained_run["run"])  # safe mode: every layer a run holds must be a registered class
    assert np.isfinite(loaded.predict_batch(np.zeros((1, 32, 32, 3), np.float32))).all()
