"""The one place that assembles a classifier and decides which of its layers train.

The model is ``image -> augment -> preprocess -> backbone -> head``, each a
named layer, so that later stages (feature caching, Grad-CAM, export) can take
it apart without guessing; ``--tta`` adds ``tta_mirror`` after augment and
``tta_mean`` after the head. It takes raw RGB pixels in 0-255.
"""

from __future__ import annotations

import difflib
import os
import re

import keras
from keras import layers

from .backbones import BACKBONE_LAYER, BackboneSpec, build_backbone
from .config import TrainConfig
from .errors import ConfigError
from .layers import MirrorBatch, MirrorMean, Preprocess

INPUT_NAME = "image"
HEAD_LAYER = "head"
AUGMENT_LAYER = "augment"
OUTPUT_NAME = "probabilities"


def augmentation(preset: str) -> keras.layers.Layer:
    """Random transforms that run only in training (Keras preprocessing layers are identity at inference)."""
    transforms = {
        "none": [],
        "flip": [layers.RandomFlip("horizontal")],  # the one augmentation that feature caching reproduces exactly
        "light": [layers.RandomFlip("horizontal"), layers.RandomRotation(0.05), layers.RandomTranslation(0.05, 0.05),
                  layers.RandomZoom(0.1)],
        "strong": [layers.RandomFlip("horizontal"), layers.RandomRotation(0.1), layers.RandomTranslation(0.1, 0.1),
                   layers.RandomZoom(0.2), layers.RandomContrast(0.2)],
    }[preset]
    if not transforms:  # an empty Sequential cannot be built; keep the layer so the model's shape is fixed
        return layers.Identity(name=AUGMENT_LAYER)
    return keras.Sequential(transforms, name=AUGMENT_LAYER)


def build_head(feature_shape, num_classes: int, config: TrainConfig) -> keras.Model:
    """Pooling, optional dense blocks (dense -> [batch norm] -> dropout), then a float32 softmax."""
    regularizer = keras.regularizers.L2(config.l2) if config.l2 else None
    pool = {"avg": layers.GlobalAveragePooling2D, "max": layers.GlobalMaxPooling2D, "flatten": layers.Flatten}
    stack = [pool[config.pooling](name="pool")]
    for i, units in enumerate(config.dense):
        stack.append(layers.Dense(units, activation="relu", kernel_regularizer=regularizer, name=f"dense{i + 1}"))
        if config.batch_norm:
            stack.append(layers.BatchNormalization(name=f"dense{i + 1}_bn"))
        if config.dropout:
            stack.append(layers.Dropout(config.dropout, name=f"dense{i + 1}_dropout"))
    if not config.dense and config.dropout:
        stack.append(layers.Dropout(config.dropout, name="dropout"))
    stack.append(layers.Dense(num_classes, activation="softmax", kernel_regularizer=regularizer, dtype="float32",
                              name=OUTPUT_NAME))
    inputs = keras.Input(feature_shape, name="features")
    x = inputs
    for layer in stack:
        x = layer(x)
    # a list of inputs, like the backbone's: the outer model passes a list and Keras warns on a mismatch
    return keras.Model([inputs], x, name=HEAD_LAYER)


def build_model(spec: BackboneSpec, config: TrainConfig, num_classes: int) -> keras.Model:
    """The full classifier for a resolved config (see :func:`transfer.backbones.resolve`)."""
    backbone = build_backbone(spec, config)
    inputs = keras.Input((config.image_size, config.image_size, 3), name=INPUT_NAME)
    x = augmentation(config.augment)(inputs)
    if config.tta:
        x = MirrorBatch(name="tta_mirror")(x)
    x = Preprocess(spec.preprocessing, name="preprocess")(x)
    x = backbone(x)
    outputs = build_head(backbone.output_shape[1:], num_classes, config)(x)
    if config.tta:
        outputs = MirrorMean(name="tta_mean")(outputs)
    return keras.Model(inputs, outputs, name="transfer_" + re.sub(r"\W", "_", os.path.basename(spec.name)))


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_LAYER)


def freeze_backbone(model: keras.Model, frozen: bool) -> None:
    """Phase 1: the whole base frozen (pretrained) or trainable (from scratch). Recompile afterwards."""
    backbone_of(model).trainable = not frozen


def unfreeze_top(model: keras.Model, unfreeze: str, keep_batchnorm_frozen: bool = True) -> int:
    """Phase 2: train the backbone's layers from the ``unfreeze`` point on; return how many layers train.

    Batch-norm layers stay frozen (and so in inference mode): Keras 3's ``fit``
    ignores the guide's ``base(x, training=False)`` (keras#20285), so
    ``trainable = False`` on each of them is what keeps their statistics.
    The caller must recompile: without it the change of ``trainable`` is ignored.
    """
    backbone = backbone_of(model)
    start = unfreeze_index(backbone, unfreeze)
    backbone.trainable = True
    for i, layer in enumerate(backbone.layers):
        layer.trainable = i >= start
        for inner in _nested(layer) if keep_batchnorm_frozen else ():
            if isinstance(inner, layers.BatchNormalization):
                inner.trainable = False
    return sum(1 for layer in backbone.layers[start:] if layer.trainable and layer.weights)


def _nested(layer: keras.layers.Layer):
    """``layer`` and, for a model inside the backbone (each member of a ``--backbone A+B`` pair), its layers."""
    yield layer
    for inner in getattr(layer, "layers", ()):
        yield from _nested(inner)


def unfreeze_index(backbone: keras.Model, unfreeze: str, option: str = "--unfreeze") -> int:
    """Index of the first backbone layer that trains, for ``all``, ``N``, ``LAYER`` or ``after:LAYER``."""
    names = [layer.name for layer in backbone.layers]
    if unfreeze == "all":
        return 0
    if unfreeze.isdigit():
        return max(0, len(names) - int(unfreeze))
    after = unfreeze.startswith("after:")
    name = unfreeze[len("after:"):] if after else unfreeze
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Similar names: {', '.join(close)}." if close else ""
        raise ConfigError(f"{option} {unfreeze!r}: the backbone has no layer {name!r}.{hint} "
                          "Use all, a number of top layers, LAYER or after:LAYER.")
    return names.index(name) + (1 if after else 0)
