"""Custom Keras layers that are saved inside every model.

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
    "torch": (1 / 255.0, 0.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False),  # DenseNet
    "caffe": (1.0, 0.0, (103.939, 116.779, 123.68), None, True),  # BGR minus ImageNet mean: VGG, ResNet
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
