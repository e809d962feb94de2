"""Custom Keras layers (and the loss) that are saved inside every model.

Preprocessing lives inside the model so that every caller (predict, the
exported SavedModel, a notebook) feeds raw RGB pixels in 0-255 and none can get
the backbone's normalisation wrong. A serializable layer is used instead of a
``Lambda`` around ``preprocess_input`` because Lambda layers do not reload in
Keras' safe mode.
"""

from __future__ import annotations

import keras
from keras import ops

#: name -> (scale, offset applied after scaling, per-channel mean, per-channel std, flip RGB->BGR)
_MODES = {
    "none": (1.0, 0.0, None, None, False),  # the backbone normalises internally (EfficientNet)
    "unit": (1 / 255.0, 0.0, None, None, False),  # [0, 1], for from-scratch nets
    "tf": (1 / 127.5, -1.0, None, None, False),  # [-1, 1]: Inception, Xception, MobileNetV2, ResNetV2
    "inception": (1 / 128.0, -1.0, None, None, False),  # (x - 128) / 128: Google's 2015 Inception-v3 release
    "torch": (1 / 255.0, 0.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),  # DenseNet
    "caffe": (1.0, 0.0, (103.939, 116.779, 123.68), None, True),  # BGR minus ImageNet mean: VGG, ResNet
    "lite": (1 / 128.0, -127 / 128.0, None, None, False),  # (x - 127) / 128: EfficientNet-Lite's TensorFlow release
}
PREPROCESSING_MODES = tuple(_MODES)


@keras.saving.register_keras_serializable(package="transfer")
class Preprocess(keras.layers.Layer):
    """Map raw RGB pixels (0-255) to what a backbone expects; same maths as keras.applications."""

    def __init__(self, mode: str = "none", **kwargs):
        super().__init__(**kwargs)
        if mode not in _MODES:
            raise ValueError(f"Expected mode in {PREPROCESSING_MODES}. Received: mode={mode!r}")
        self.mode = mode

    def call(self, x):
        scale, offset, mean, std, flip = _MODES[self.mode]
        x = ops.cast(x, self.compute_dtype)
        if flip:
            x = ops.flip(x, axis=-1)
        x = x * scale + offset
        if mean is not None:
            x = x - ops.convert_to_tensor(mean, dtype=x.dtype)
        if std is not None:
            x = x / ops.convert_to_tensor(std, dtype=x.dtype)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="transfer")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization, computed by TensorFlow's fused kernel where it applies.

    Keras 3 normalises with separate moments and normalize ops; on a CPU that made
    batch norm about 60 % of the from-scratch nets' training step (BENCHMARKS.md).
    Same weights, momentum and epsilon; the running variance uses the unbiased
    estimate (as tf.keras 2's fused path did). Other backends, masks or layouts use
    Keras' own code, so a model trained here loads and runs anywhere Keras does.
    """

    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None and len(inputs.shape) == 4
                and self.axis in (-1, 3) and self.center and self.scale and not self.renorm)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, "float32")  # as Keras does: statistics in float32 under mixed precision
        params = dict(scale=tf.cast(self.gamma, "float32"), offset=tf.cast(self.beta, "float32"),
                      mean=tf.cast(self.moving_mean, "float32"), variance=tf.cast(self.moving_variance, "float32"),
                      epsilon=self.epsilon)
        if training and self.trainable:
            y, mean, variance, *_ = tf.compat.v1.nn.fused_batch_norm(
                x, is_training=True, exponential_avg_factor=1.0 - self.momentum, **params)
            self.moving_mean.assign(mean)  # the kernel returns the updated running averages
            self.moving_variance.assign(variance)
        else:
            y = tf.compat.v1.nn.fused_batch_norm(x, is_training=False, **params)[0]
        return ops.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="transfer")
class MirrorBatch(keras.layers.Layer):
    """Test-time augmentation, first half: at inference, append every image's mirror image to the batch.

    :class:`MirrorMean` after the head averages each image's two predictions.
    Being layers of the model, they apply wherever the model goes (validation,
    ``predict``, the exported SavedModel) without a flag to remember. In training
    both pass their input through: the random flips of augmentation already show
    the net mirrored images.
    """

    def call(self, inputs, training=None):
        if training:
            return inputs
        return ops.concatenate([inputs, ops.flip(inputs, axis=2)], axis=0)  # axis 2: width, in NHWC

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="transfer")
class MirrorMean(keras.layers.Layer):
    """Test-time augmentation, second half: the mean of each image's prediction and its mirror image's."""

    def call(self, inputs, training=None):
        if training:
            return inputs
        half = ops.shape(inputs)[0] // 2
        return (inputs[:half] + inputs[half:]) / 2

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="transfer")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy on integer labels with label smoothing, which Keras' sparse loss lacks.

    The target of class k is ``1 - s + s/n`` for k and ``s/n`` for the others
    (``--label-smoothing s``), so the net is not pushed to ever more confident
    outputs on a small training set. Registered so that a saved model recompiles on load.
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        targets = ops.one_hot(labels, ops.shape(y_pred)[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(targets, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
