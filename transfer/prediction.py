"""Prediction from any artifact transfer makes: a run folder, a ``.keras`` file, an exported SavedModel, ``.tflite``
or ``.onnx``, each loaded by :mod:`transfer.runners`.

Labels, input size and resizing come from the artifact itself, never from
flags. Images go through the same decoder as training; a file that cannot be
read is reported with its reason while every other file is still predicted.
"""

from __future__ import annotations

import glob
import numbers
import os
from dataclasses import dataclass, field

import numpy as np

from . import inputs as inputs_
from .data.images import MAX_PIXELS, is_image_name, load_image
from .config import PREDICT_BATCH, TOP_K
from .errors import ConfigError, ImageError, RunError
from .runners import LoadedModel, load_model


@dataclass
class Prediction:
    path: str
    top_k: list[tuple[str, float]]

    @property
    def label(self) -> str:
        return self.top_k[0][0]

    @property
    def probability(self) -> float:
        return self.top_k[0][1]

    def to_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "probability": self.probability,
                "top_k": [{"label": label, "probability": p} for label, p in self.top_k]}


@dataclass
class PredictResult:
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def collect_inputs(inputs: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand files, folders (recursively: image extensions only) and globs; report what matched nothing."""
    paths, failures = [], []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(d, f) for d, _, files in os.walk(item) for f in files
                           if is_image_name(f) and not f.startswith("."))
            paths += found
            if not found:
                failures.append((item, "folder has no images"))
        elif os.path.exists(item) or os.path.islink(item):
            paths.append(item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            paths += found
            if not found:
                failures.append((item, "no files match"))
        else:
            failures.append((item, "file not found"))
    return list(dict.fromkeys(paths)), failures


def predict(model: str | LoadedModel, inputs: list[str], top_k: int = TOP_K, batch_size: int = PREDICT_BATCH,
            max_pixels: int = MAX_PIXELS, unsafe: bool = False) -> PredictResult:
    """Top-k labels for every image in ``inputs``; unreadable ones go to ``failures`` with their reason.

    ``inputs`` is a list of paths; a single path (text or ``os.PathLike``) is one input.
    """
    inputs = inputs_.paths(inputs, "inputs")
    for name, value in (("top_k", top_k), ("batch_size", batch_size), ("max_pixels", max_pixels)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ConfigError(f"{name} must be a whole number of at least 1; got {value!r}.")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, unsafe)
    paths, failures = collect_inputs(inputs)
    result = PredictResult(failures=failures)
    k = max(1, min(top_k, len(loaded.labels)))
    for path, probs, error in probabilities(loaded, paths, batch_size, max_pixels):
        if error:
            result.failures.append((path, error))
            continue
        order = np.argsort(-probs)[:k]
        result.predictions.append(Prediction(path, [(loaded.labels[j], float(probs[j])) for j in order]))
    return result


def probabilities(loaded: LoadedModel, paths: list[str], batch_size: int = PREDICT_BATCH, max_pixels: int = MAX_PIXELS):
    """(path, probabilities of every class, None), or (path, None, reason) for a file that cannot be decoded, for
    each of ``paths`` in order: the one batch loop that predict and evaluate share."""
    import tensorflow as tf

    if not paths:
        return
    height, width = loaded.image_size

    def decode(path):
        try:
            return load_image(os.fsdecode(path), (height, width), loaded.resize, max_pixels), b""
        except ImageError as error:
            return np.zeros((height, width, 3), np.uint8), str(error).encode()

    def load(path):
        image, error = tf.numpy_function(decode, [path], (tf.uint8, tf.string), stateful=False)
        image.set_shape((height, width, 3))
        return tf.cast(image, tf.float32), error

    names = [os.fsencode(p) for p in paths]  # bytes: any file name the OS accepts, UTF-8 or not
    ds = (tf.data.Dataset.from_tensor_slices(names).map(load, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(min(batch_size, len(paths))).prefetch(tf.data.AUTOTUNE))
    start = 0
    for images, errors in ds:
        batch = loaded.predict_batch(images.numpy())
        for i, (probs, error) in enumerate(zip(batch, errors.numpy())):
            path = paths[start + i]
            if error:
                yield path, None, error.decode()
                continue
            if not np.all(np.isfinite(probs)):
                raise RunError(f"the model {loaded.source!r} gives NaN or infinite probabilities (for {path!r}): its "
                               "weights are broken, e.g. by a training run that diverged; train it again.")
            yield path, probs, None
        start += len(batch)
