"""The saved ``model.keras``: built-in Keras layers only, so plain Keras opens it without importing transfer.

Training keeps its own layers (:mod:`transfer.layers`): the fused batch norm
is several times faster on a CPU, and ``--tta``'s mirroring appends to the
batch. :func:`portable` rebuilds a trained model from built-in layers that
compute the same thing with the same weights, and :func:`save` writes that
copy, so ``keras.saving.load_model(path)`` works in safe mode in any notebook
(and in TF Serving's world, which knows no transfer):

- ``Preprocess`` becomes ``Dense(3)`` (caffe's RGB->BGR flip, a frozen
  permutation matrix), ``Rescaling`` and ``Normalization`` (mean, std);
- ``FusedBatchNormalization`` becomes ``BatchNormalization`` (same weights);
- ``MirrorBatch`` / ``MirrorMean`` become a width flip (``Permute``, a frozen
  anti-diagonal ``Dense``, ``Permute``; exact, as every output is one input
  times 1), the shared backbone and head run on both views, and ``Average``;
- it is saved uncompiled, so neither the custom smoothed loss nor an
  optimizer state the model has no use for travels with it (``compile`` it to
  ``evaluate`` or train on; config.json records how it was trained).

Older run folders, saved with the custom layers, still load through
:func:`transfer.runners.load_model`, which registers them.
"""

from __future__ import annotations

import keras
import numpy as np

from ..layers import _MODES, MirrorBatch, MirrorMean, Preprocess

#: pixel values that tell every preprocessing mode apart (see :func:`preprocessing_mode`)
_PROBE = np.array([[[[0.0, 60.0, 255.0], [127.0, 200.0, 31.0]]]], np.float32)


def save(model: keras.Model, path: str) -> None:
    """Write ``model`` as a ``.keras`` file of built-in layers only (see the module docstring)."""
    portable(model).save(path)


def portable(model: keras.Model) -> keras.Model:
    """The same classifier made of built-in layers; layers already built-in are shared, not copied.

    The model is the chain :func:`transfer.heads.build_model` makes; each link
    is applied to every view of the image (one, or two between ``tta_mirror``
    and ``tta_mean``).
    """
    inputs = keras.Input(model.input_shape[1:], name=model.layers[0].name)
    views = [inputs]
    for layer in model.layers[1:]:
        if isinstance(layer, MirrorBatch):
            views = [views[0], mirror(model.input_shape[2], layer.name, layer.dtype_policy)(views[0])]
        elif isinstance(layer, MirrorMean):
            views = [keras.layers.Average(name=layer.name, dtype=layer.dtype_policy)(views)]
        else:
            built_in = preprocessing_layer(layer.mode, layer.name, layer.dtype_policy) if isinstance(
                layer, Preprocess) else with_batch_norm(layer, keras.layers.BatchNormalization)
            views = [built_in(view) for view in views]
    return keras.Model(inputs, views[0], name=model.name)


def preprocessing_layer(mode: str, name: str = "preprocess", dtype=None) -> keras.layers.Layer:
    """Built-in layers computing what ``Preprocess(mode)`` computes (the same maths up to float rounding)."""
    scale, offset, mean, std, flip = _MODES[mode]
    stack = []
    if flip:
        stack.append(_frozen_dense(np.eye(3, dtype=np.float32)[::-1], f"{name}_bgr", dtype))
    if (scale, offset) != (1.0, 0.0):
        stack.append(keras.layers.Rescaling(scale, offset, name=f"{name}_scale", dtype=dtype))
    if mean is not None:
        variance = np.square(std).tolist() if std is not None else [1.0, 1.0, 1.0]
        stack.append(keras.layers.Normalization(mean=list(mean), variance=variance, name=f"{name}_normalize",
                                                dtype=dtype))
    if not stack:
        return keras.layers.Identity(name=name)
    return keras.Sequential(stack, name=name)


def preprocessing_mode(layer: keras.layers.Layer) -> str:
    """The mode of a ``Preprocess`` layer or of its built-in equivalent, recognised by what it computes."""
    if isinstance(layer, Preprocess):
        return layer.mode
    got = keras.ops.convert_to_numpy(layer(_PROBE))
    for mode in _MODES:
        if np.allclose(keras.ops.convert_to_numpy(Preprocess(mode)(_PROBE)), got, rtol=1e-4, atol=1e-4):
            return mode
    raise ValueError(f"layer {layer.name!r} computes none of the preprocessing modes {tuple(_MODES)}")


def mirror(width: int, name: str, dtype=None) -> keras.Model:
    """Flip images left to right with built-in layers: NHWC -> NCHW, reverse W by a permutation matrix, back."""
    return keras.Sequential([keras.layers.Permute((3, 1, 2), name=f"{name}_to_rows"),
                             _frozen_dense(np.eye(width, dtype=np.float32)[::-1], f"{name}_flip", dtype),
                             keras.layers.Permute((2, 3, 1), name=f"{name}_to_pixels")], name=name)


def _frozen_dense(kernel: np.ndarray, name: str, dtype=None) -> keras.layers.Dense:
    """A bias-free, non-trainable Dense layer with this kernel: a fixed linear map of the last axis."""
    layer = keras.layers.Dense(kernel.shape[1], use_bias=False, trainable=False, name=name, dtype=dtype)
    layer.build((None, kernel.shape[0]))
    layer.set_weights([np.ascontiguousarray(kernel)])
    return layer


def with_batch_norm(layer: keras.layers.Layer, kind: type) -> keras.layers.Layer:
    """``layer`` itself, or, if it is a model holding batch norms of another class, a copy whose batch norms
    are ``kind`` (``BatchNormalization`` or :class:`FusedBatchNormalization`) with the same weights.

    Every other layer of the copy is the original layer object, so no other weights are copied.
    """
    if not isinstance(layer, keras.Model) or not any(_other_batch_norm(inner, kind) for inner in all_layers(layer)):
        return layer
    swapped = []

    def clone(inner):
        if not _other_batch_norm(inner, kind):
            return inner
        swapped.append((inner, kind.from_config(inner.get_config())))
        return swapped[-1][1]

    copy = keras.models.clone_model(layer, clone_function=clone, recursive=True)
    for old, new in swapped:
        new.set_weights(old.get_weights())
    return copy


def _other_batch_norm(layer: keras.layers.Layer, kind: type) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization) and type(layer) is not kind


def all_layers(model: keras.Model):
    """Every layer inside ``model``, nested models' layers included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)

