"""LiteRT (``ai-edge-litert``) runs every ``.tflite`` when installed: prediction and the TFLite feature engine;
without it, TensorFlow's ``tf.lite.Interpreter`` computes the same."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from conftest import COLOURS, write_image

litert = pytest.importorskip("ai_edge_litert.interpreter", reason="the lite extra installs ai-edge-litert")


@pytest.fixture(scope="module")
def small():
    """A tiny classifier, its .tflite and a few images (0-255)."""
    import keras

    from transfer import runners
    from transfer.export import tflite

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    images = np.random.default_rng(0).uniform(0, 255, (5, 16, 16, 3)).astype(np.float32)
    return model, tflite.convert(model), images


def test_the_runner_takes_litert_when_it_is_installed(small):
    from transfer import runners
    from transfer.export import tflite

    model, content, images = small
    runner = runners.TFLiteRunner(content)
    assert runner.engine == "litert" and isinstance(runner.interpreter, litert.Interpreter)
    np.testing.assert_allclose(runner(images), model.predict_on_batch(images), atol=1e-5)


def test_without_litert_tf_lite_computes_the_same(small, monkeypatch):
    import tensorflow as tf

    from transfer import runners
    from transfer.export import tflite

    _, content, images = small
    expected = runners.TFLiteRunner(content)(images)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # what an import finds when not installed
    runner = runners.TFLiteRunner(content)
    assert runner.engine == "tf.lite" and isinstance(runner.interpreter, tf.lite.Interpreter)
    np.testing.assert_array_equal(runner(images), expected)


def test_an_unknown_interpreter_is_refused(small):
    from transfer import runners

    with pytest.raises(ValueError, match="litert"):
        runners.interpreter(small[1], name="tflite-runtime")


def test_predict_on_a_tflite_file_runs_litert(small, tmp_path):
    from transfer.prediction import predict
    from transfer.runners import load_model

    model, content, _ = small
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    image = write_image(str(tmp_path / "red.png"), COLOURS["red"], size=16)
    loaded = load_model(str(path))
    assert loaded.kind == "tflite" and loaded.predict_batch.engine == "litert"
    (got,) = predict(loaded, [image]).predictions
    pixels = np.asarray(Image.open(image), np.float32)[None]
    assert got.label == "abc"[int(np.argmax(model.predict_on_batch(pixels)))]


def test_the_feature_engine_runs_litert(small):
    """--feature-engine tflite: the frozen extractor runs in LiteRT, checked against Keras on the first batch."""
    from transfer import features

    model, _, images = small
    engine = features._Engine(model, "tflite")
    np.testing.assert_allclose(engine(images), model.predict_on_batch(images), atol=1e-5)
    assert engine.checked and engine.runner.engine == "litert"
