"""FusedBatchNormalization: Keras' batch norm maths through TensorFlow's fused kernel, saved and reloaded."""

import os

import keras
import numpy as np
import pytest

from transfer.layers import FusedBatchNormalization


def _pair(momentum=0.9):
    x = np.random.RandomState(0).normal(2.0, 3.0, (8, 5, 5, 4)).astype("float32")
    layers = keras.layers.BatchNormalization(momentum=momentum), FusedBatchNormalization(momentum=momentum)
    for layer in layers:
        layer.build(x.shape)
        layer.gamma.assign(np.arange(1, 5, dtype="float32"))
        layer.beta.assign(np.full(4, 0.5, "float32"))
    return x, layers


def test_training_step_matches_keras_batch_norm():
    x, (keras_bn, fused) = _pair()
    np.testing.assert_allclose(fused(x, training=True), keras_bn(x, training=True), atol=1e-5)
    np.testing.assert_allclose(fused.moving_mean.numpy(), keras_bn.moving_mean.numpy(), atol=1e-6)
    # the running variance is the unbiased estimate (n / (n - 1) of Keras' biased one), as in tf.keras 2
    n = x.size // x.shape[-1]
    batch_var = x.reshape(-1, 4).var(axis=0)
    np.testing.assert_allclose(fused.moving_variance.numpy(), 0.9 + 0.1 * batch_var * n / (n - 1), rtol=1e-5)


def test_inference_uses_the_moving_statistics_like_keras():
    x, (keras_bn, fused) = _pair()
    for layer in (keras_bn, fused):
        layer.moving_mean.assign(np.array([1.0, 2.0, 3.0, 4.0], "float32"))
        layer.moving_variance.assign(np.array([0.5, 1.0, 2.0, 4.0], "float32"))
    np.testing.assert_allclose(fused(x, training=False), keras_bn(x, training=False), atol=1e-5)
    fused.trainable = False  # a frozen layer normalises with its moving statistics even in training
    np.testing.assert_allclose(fused(x, training=True), keras_bn(x, training=False), atol=1e-5)
    np.testing.assert_array_equal(fused.moving_mean.numpy(), [1.0, 2.0, 3.0, 4.0])


def test_other_layouts_fall_back_to_keras():
    x = np.random.RandomState(1).normal(size=(6, 3)).astype("float32")
    keras_bn, fused = keras.layers.BatchNormalization(), FusedBatchNormalization()
    np.testing.assert_allclose(fused(x, training=True), keras_bn(x, training=True), atol=1e-6)


def test_mixed_precision_keeps_float32_statistics():
    x, (_, fused) = _pair()
    half = FusedBatchNormalization(momentum=0.9, dtype="mixed_float16")
    half.build(x.shape)
    half.set_weights(fused.get_weights())
    y = half(x.astype("float16"), training=True)
    assert y.dtype == "float16" and half.moving_mean.dtype == "float32"
    np.testing.assert_allclose(np.asarray(y, np.float32), fused(x, training=True), atol=2e-2)
    np.testing.assert_allclose(half.moving_mean.numpy(), fused.moving_mean.numpy(), atol=1e-3)


def test_saved_and_reloaded_with_its_weights(tmp_path):
    inputs = keras.Input((5, 5, 4))
    model = keras.Model(inputs, FusedBatchNormalization(name="bn")(inputs))
    x, _ = _pair()
    model.get_layer("bn")(x, training=True)  # move the statistics away from their initial values
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("bn"), FusedBatchNormalization)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.parametrize("net", ["smallvgg", "smallresnet"])
def test_scratch_nets_use_it(net):
    from transfer import backbones

    base = backbones.get(net).build((32, 32, 3))
    assert any(isinstance(layer, FusedBatchNormalization) for layer in base.layers)


def test_label_smoothing_loss_is_cross_entropy_against_smoothed_targets():
    from transfer.layers import SparseSmoothedCrossentropy

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], "float32")
    labels = np.array([0, 2])
    s = 0.3
    targets = np.full((2, 3), s / 3) + np.eye(3)[labels] * (1 - s)  # 1 - s + s/n for the true class, s/n else
    expected = float(np.mean(-(targets * np.log(probs)).sum(axis=1)))
    assert float(SparseSmoothedCrossentropy(s)(labels, probs)) == pytest.approx(expected, rel=1e-5)
    plain = keras.losses.SparseCategoricalCrossentropy()(labels, probs)
    assert float(SparseSmoothedCrossentropy(0.0)(labels[:, None], probs)) == pytest.approx(float(plain), rel=1e-5)
    restored = SparseSmoothedCrossentropy.from_config(SparseSmoothedCrossentropy(s).get_config())
    assert restored.label_smoothing == s
