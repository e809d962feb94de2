"""Prediction from any artifact transfer makes: a run folder, a ``.keras`` file or an exported SavedModel.

Labels, input size and resizing come from the artifact itself, never from
flags. Images go through the same decoder as training; a file that cannot be
read is reported with its reason while every other file is still predicted.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import runs
from .errors import ImageError, RunError
from .images import is_image_name, load_image


@dataclass
class LoadedModel:
    """A model ready to predict, whatever it was loaded from."""

    source: str
    kind: str  # "run", "keras" or "savedmodel"
    labels: list[str]
    image_size: tuple[int, int]
    resize: str
    predict_batch: Callable[[np.ndarray], np.ndarray]  # float32 (n, h, w, 3) in 0-255 -> (n, classes)
    keras_model: object = None


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


def load_model(path: str) -> LoadedModel:
    """Load a run folder, a ``.keras`` file, a SavedModel folder or a TF-Serving base folder."""
    if runs.is_run_folder(path):
        run = runs.load_run(path)
        return _from_keras(run.model_path, run.labels, run.record["model"].get("resize", "squash"), "run")
    if os.path.isfile(path) and path.endswith(".keras"):
        folder = os.path.dirname(os.path.abspath(path))
        if runs.is_run_folder(folder):
            run = runs.load_run(folder)
            return _from_keras(path, run.labels, run.record["model"].get("resize", "squash"), "keras")
        return _from_keras(path, _read_labels(os.path.join(folder, runs.LABELS_FILE)), "squash", "keras")
    saved_model = _saved_model_dir(path)
    if saved_model:
        return _from_saved_model(saved_model)
    raise RunError(f"{path!r} is not a run folder, a .keras file or an exported SavedModel.")


def _from_keras(path: str, labels: list[str] | None, resize: str, kind: str) -> LoadedModel:
    import keras

    from . import layers  # noqa: F401  (registers the custom layers the model file refers to)

    try:
        model = keras.saving.load_model(path)
    except Exception as error:
        raise RunError(f"cannot load the model {path!r}: {error}") from None
    _, height, width, _ = model.input_shape
    classes = model.output_shape[-1]
    labels = labels or [str(i) for i in range(classes)]
    return LoadedModel(path, kind, labels, (height, width), resize,
                       lambda batch: np.asarray(model.predict_on_batch(batch)), keras_model=model)


def _saved_model_dir(path: str) -> str | None:
    """The SavedModel folder itself, or the newest numeric version inside a TF-Serving base folder."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if os.path.isdir(path):
        versions = [d for d in os.listdir(path) if d.isdigit() and os.path.isfile(os.path.join(path, d, "saved_model.pb"))]
        if versions:
            return os.path.join(path, max(versions, key=int))
    return None


def _from_saved_model(path: str) -> LoadedModel:
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
        serve = loaded.signatures["serving_default"]
    except Exception as error:
        raise RunError(f"cannot load the SavedModel {path!r}: {error}") from None
    (input_name, spec), = serve.structured_input_signature[1].items()
    _, height, width, _ = spec.shape
    info = _read_json(os.path.join(path, "assets.extra", "transfer.json")) or {}
    labels = (_read_labels(os.path.join(path, "assets.extra", runs.LABELS_FILE))
              or [str(i) for i in range(serve.structured_outputs["probabilities"].shape[-1])])

    def predict_batch(batch):
        return serve(**{input_name: tf.constant(batch, tf.float32)})["probabilities"].numpy()

    return LoadedModel(path, "savedmodel", labels, (height, width), info.get("resize", "squash"), predict_batch)


def _read_labels(path: str) -> list[str] | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


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


def predict(model: str | LoadedModel, inputs: list[str], top_k: int = 3, batch_size: int = 32) -> PredictResult:
    """Top-k labels for every image in ``inputs``; unreadable ones go to ``failures`` with their reason."""
    import tensorflow as tf

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    paths, failures = collect_inputs(inputs)
    result = PredictResult(failures=failures)
    if not paths:
        return result
    height, width = loaded.image_size

    def decode(path):
        try:
            return load_image(os.fsdecode(path), (height, width), loaded.resize), b""
        except ImageError as error:
            return np.zeros((height, width, 3), np.uint8), str(error).encode()

    def load(path):
        image, error = tf.numpy_function(decode, [path], (tf.uint8, tf.string), stateful=False)
        image.set_shape((height, width, 3))
        return tf.cast(image, tf.float32), error

    names = [os.fsencode(p) for p in paths]  # bytes: any file name the OS accepts, UTF-8 or not
    ds = (tf.data.Dataset.from_tensor_slices(names).map(load, num_parallel_calls=tf.data.AUTOTUNE)
          .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    k = max(1, min(top_k, len(loaded.labels)))
    start = 0
    for images, errors in ds:
        probabilities = loaded.predict_batch(images.numpy())
        for i, (probs, error) in enumerate(zip(probabilities, errors.numpy())):
            path = paths[start + i]
            if error:
                result.failures.append((path, error.decode()))
                continue
            order = np.argsort(-probs)[:k]
            result.predictions.append(Prediction(path, [(loaded.labels[j], float(probs[j])) for j in order]))
        start += len(probabilities)
    return result
