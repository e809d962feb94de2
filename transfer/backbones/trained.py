"""Backbones taken from trained models: ``--backbone PATH`` (a ``transfer`` run folder or any ``.keras`` file).

This is how a user transfers from their own in-house model. The model's
convolutional base is kept with its weights and its own preprocessing; its head
(everything from the last pooling/flatten layer on) is dropped.
"""

from __future__ import annotations

import os

from ..errors import ConfigError
from .registry import BACKBONE_LAYER, BackboneSpec, HeadDefaults, register_source


def from_model(path: str, unsafe: bool = False) -> BackboneSpec | None:
    """The spec of the model at ``path``, or None when nothing is there (then the name is simply unknown).

    Reading the file's input size and preprocessing needs Keras, so a path
    backbone is only opened when training starts.
    """
    if not os.path.exists(path):
        return None
    from ..runs import MODEL_FILE, is_run_folder

    model_path = os.path.join(path, MODEL_FILE) if is_run_folder(path) else path
    if not (os.path.isfile(model_path) and model_path.endswith(".keras")):
        raise ConfigError(f"--backbone {path!r} is neither a registry name nor a .keras model or run folder.")
    source = _load_source(model_path, unsafe)
    base, preprocessing = _conv_base(source, model_path)
    size = source.input_shape[1]
    return BackboneSpec(
        name=os.path.abspath(path), build=lambda input_shape, weights=None, **_: base, preprocessing=preprocessing,
        default_size=size, min_size=size, unfreeze="all", params=base.count_params(), kind="model",
        head=HeadDefaults(), fine_tune_epochs=10, description=f"the convolutional base of {model_path}",
        weights_source=lambda spec: f"the trained model {model_path}")


def _load_source(model_path: str, unsafe: bool):
    import keras

    from .. import layers  # noqa: F401  (a run saved before model.keras was portable refers to its custom layers)
    from ..runners import refused_code

    try:
        return keras.saving.load_model(model_path, compile=False, safe_mode=not unsafe)
    except Exception as error:
        refused = refused_code(error, model_path)
        if refused:
            raise ConfigError(f"--backbone {refused}") from None
        raise ConfigError(f"--backbone {model_path!r} cannot be loaded as a Keras model: {error}") from None


def _conv_base(model, model_path: str):
    """(base, preprocessing): a transfer model's own backbone, or any model cut before its last pooling/flatten."""
    import keras

    from ..layers import FusedBatchNormalization
    from ..export.portable import preprocessing_mode, with_batch_norm

    names = [layer.name for layer in model.layers]
    if BACKBONE_LAYER in names and "preprocess" in names:  # batch norm fused again: it trains faster on a CPU
        return (with_batch_norm(model.get_layer(BACKBONE_LAYER), FusedBatchNormalization),
                preprocessing_mode(model.get_layer("preprocess")))
    cuts = [layer for layer in model.layers if isinstance(
        layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten))]
    if not cuts:
        raise ConfigError(f"--backbone {model_path!r} has no pooling or flatten layer to cut its head at.")
    return keras.Model(model.inputs, cuts[-1].input, name="source_base"), "none"


register_source(from_model)
