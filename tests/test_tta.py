"""Test-time mirroring (--tta): layers of the model, so validation, predict and export all average."""

import json
import os

import keras
import numpy as np
import pytest
from PIL import Image

from cli import main
from conftest import make_dataset
from transfer.layers import MirrorBatch, MirrorMean


def _asymmetric_net(size=8):
    """A random net that sees left from right (a dense layer on the flattened image).

    Seeded, and fed pixels in 0-1 by the tests: on 0-255 an unseeded draw could saturate the
    softmax, so that an image and its mirror image gave the same one-hot output.
    """
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, x)


def _with_tta(inner, size=8):
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, MirrorMean()(inner(MirrorBatch()(inputs))))


def test_inference_averages_each_image_and_its_mirror_image():
    inner = _asymmetric_net()
    x = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 3)).astype("float32")
    mirrored = x[:, :, ::-1]
    plain, plain_mirrored = inner.predict_on_batch(x), inner.predict_on_batch(mirrored)
    assert np.abs(plain - plain_mirrored).max() > 1e-3  # so the checks below can fail
    model = _with_tta(inner)
    np.testing.assert_allclose(model.predict_on_batch(x), (plain + plain_mirrored) / 2, atol=1e-6)
    np.testing.assert_allclose(model.predict_on_batch(x), model.predict_on_batch(mirrored), atol=1e-6)


def test_training_passes_the_batch_through():
    inner = _asymmetric_net()
    x = np.random.default_rng(1).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(_with_tta(inner)(x, training=True), inner(x, training=True), atol=1e-6)


def test_saved_and_reloaded(tmp_path):
    model = _with_tta(_asymmetric_net())
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(2).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)


@pytest.mark.slow
def test_a_tta_run_predicts_and_exports_mirror_images_alike(runner, tmp_path):
    data = make_dataset(tmp_path / "colours", per_class=8)
    result = runner.invoke(main, ["train", data, "--backbone", "smallcnn", "--image-size", "32", "--epochs", "2",
                                  "--tta", "--batch-size", "8", "-o", str(tmp_path / "models"), "--name", "tta",
                                  "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    run = str(tmp_path / "models" / "tta")
    with open(os.path.join(run, "config.json")) as f:
        assert json.load(f)["config"]["tta"] is True
    assert json.loads(result.stdout)["metrics"]["val"]["images"] > 0

    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # left differs from right
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels[:, ::-1]).save(tmp_path / "a_mirrored.png")

    def probabilities(model):
        out = runner.invoke(main, ["predict", model, str(tmp_path / "a.png"), str(tmp_path / "a_mirrored.png"),
                                   "-k", "3", "--json"])
        assert out.exit_code == 0, out.output
        rows = json.loads(out.stdout)["predictions"]
        return [{p["label"]: p["probability"] for p in row["top_k"]} for row in rows]

    first, mirrored = probabilities(run)
    assert first.keys() == mirrored.keys()
    for label in first:
        assert first[label] == pytest.approx(mirrored[label], abs=1e-5)

    exported = runner.invoke(main, ["export", run, "--output", str(tmp_path / "serving"), "--json"])
    assert exported.exit_code == 0, exported.output
    served, served_mirrored = probabilities(str(tmp_path / "serving" / "tta"))
    for label in first:
        assert served[label] == pytest.approx(first[label], abs=1e-5)
        assert served_mirrored[label] == pytest.approx(first[label], abs=1e-5)
