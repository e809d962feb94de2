"""Prediction from any artifact transfer makes: a run folder, a ``.keras`` file, an exported SavedModel, ``.tflite``
or ``.onnx``.

Labels, input size and resizing come from the artifact itself, never from
flags. Images go through the same decoder as training; a file that cannot be
read is reported with its reason while every other file is still predicted.
"""

from __future__ import annotations

import glob
import json
import logging
import numbers
import os
import zipfile
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import inputs as inputs_, runs
from .errors import ConfigError, ImageError, RunError, first_line
from .images import MAX_PIXELS, is_image_name, load_image

log = logging.getLogger("transfer")


@dataclass
class LoadedModel:
    """A model ready to predict, whatever it was loaded from."""

    source: str
    kind: str  # "run", "keras", "savedmodel", "tflite" or "onnx"
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


def load_model(path: str, unsafe: bool = False) -> LoadedModel:
    """Load a run folder, a ``.keras`` file, a SavedModel folder, a TF-Serving base folder, a ``.tflite``
    (file, or the ``tflite-<quantize>`` folder that holds it) or an ``.onnx`` (file, or the ``onnx`` folder).

    ``.keras`` files load in Keras' safe mode: a model that would run arbitrary
    Python code (a ``Lambda`` layer) is refused unless ``unsafe`` is true.
    """
    path = inputs_.path(path, "model")
    if runs.is_run_folder(path):
        run = runs.load_run(path)
        return _from_keras(run.model_path, run.labels, run.record["model"].get("resize", "squash"), "run",
                           f"{runs.CONFIG_FILE} of {path!r}", unsafe)
    if os.path.isfile(path) and path.endswith(".keras"):
        folder = os.path.dirname(os.path.abspath(path))
        if runs.is_run_folder(folder):
            run = runs.load_run(folder)
            return _from_keras(path, run.labels, run.record["model"].get("resize", "squash"), "keras",
                               f"{runs.CONFIG_FILE} of {folder!r}", unsafe)
        labels_file = os.path.join(folder, runs.LABELS_FILE)
        return _from_keras(path, _read_labels(labels_file), "squash", "keras", repr(labels_file), unsafe)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, runs.TFLITE_FILE)):
        path = os.path.join(path, runs.TFLITE_FILE)
    if os.path.isfile(path) and path.endswith(".tflite"):
        return _from_tflite(path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, runs.ONNX_FILE)):
        path = os.path.join(path, runs.ONNX_FILE)
    if os.path.isfile(path) and path.endswith(".onnx"):
        return _from_onnx(path)
    saved_model = _saved_model_dir(path)
    if saved_model:
        return _from_saved_model(saved_model)
    raise RunError(f"{path!r} is not a run folder, a .keras file, an exported SavedModel, a .tflite or an .onnx file.")


def _from_keras(path: str, labels: list[str] | None, resize: str, kind: str, labels_from: str,
                unsafe: bool = False) -> LoadedModel:
    import keras

    from . import layers  # noqa: F401  (registers the custom layers the model file refers to)

    if not zipfile.is_zipfile(path):  # Keras would call it "File not found"
        raise RunError(f"{path!r} is not a valid .keras file (truncated or another format); train again or restore it.")
    try:
        model = keras.saving.load_model(path, safe_mode=not unsafe)
    except Exception as error:
        refused = refused_code(error, path)
        if refused:
            raise RunError(refused) from None
        raise RunError(f"cannot load the model {path!r} (a damaged or foreign .keras file?): {error}") from None
    _, height, width, _ = model.input_shape
    labels = _checked_labels(labels, model.output_shape[-1], path, labels_from)
    return LoadedModel(path, kind, labels, (height, width), resize,
                       lambda batch: np.asarray(model.predict_on_batch(batch)), keras_model=model)


def refused_code(error: Exception, path: str = "") -> str | None:
    """What to say when Keras' safe mode refused to load ``path`` (it holds Python code): our --unsafe, never
    Keras' own ``safe_mode=False`` advice; None for another error."""
    if "safe_mode" not in str(error) and "unsafe" not in str(error):
        return None
    return (f"{path!r} holds a Lambda layer (or other Python code), which would run when the model is loaded; "
            "refused in Keras' safe mode. If you trust the file, pass --unsafe.")


def _checked_labels(labels: list[str] | None, classes: int, model: str, labels_from: str) -> list[str]:
    """The labels, which must be one per output of the model; class numbers (with a warning) when there are none."""
    if labels is None:
        log.warning("no labels found for %s (looked for %s); printing class indices", model, labels_from)
        return [str(i) for i in range(classes)]
    if len(labels) != classes:
        raise RunError(f"{labels_from} lists {len(labels)} labels but the model {model!r} has {classes} outputs; "
                       "the files were edited or mixed up: restore them or train again.")
    return labels


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

    from .savedmodel import PIXELS_SIGNATURE

    try:
        loaded = tf.saved_model.load(path)
        serve = loaded.signatures.get(PIXELS_SIGNATURE) or loaded.signatures["serving_default"]  # or an older export's
        (input_name, spec), = serve.structured_input_signature[1].items()
        classes = serve.structured_outputs["probabilities"].shape[-1]
    except Exception as error:
        raise RunError(f"{path!r} is not a valid SavedModel of transfer (damaged, or exported by another tool): "
                       f"{first_line(error)}") from None
    _, height, width, _ = spec.shape
    info_file = os.path.join(path, "assets.extra", runs.EXPORT_INFO_FILE)
    info = _read_json(info_file) or {}
    labels = _checked_labels(_info_labels(info, info_file), classes, path, repr(info_file))

    def predict_batch(batch):
        return serve(**{input_name: tf.constant(batch, tf.float32)})["probabilities"].numpy()

    return LoadedModel(path, "savedmodel", labels, (height, width), info.get("resize", "squash"), predict_batch)


def _from_tflite(path: str) -> LoadedModel:
    """A ``.tflite`` run by XNNPACK; labels and resizing from the ``metadata.json`` (or ``labels.txt``) beside it."""
    from .tflite import Runner

    try:
        with open(path, "rb") as f:
            runner = Runner(f.read())
        _, height, width, _ = runner.input["shape_signature"]
        classes = int(runner.output["shape_signature"][-1])
    except (ValueError, RuntimeError, IndexError) as error:
        raise RunError(f"{path!r} is not a valid TensorFlow Lite image model (truncated, damaged or another "
                       f"format): {first_line(error)}") from None
    labels, resize = _beside(path, classes)
    return LoadedModel(path, "tflite", labels, (int(height), int(width)), resize, runner)


def _from_onnx(path: str) -> LoadedModel:
    """An ``.onnx`` run by onnxruntime; labels and resizing from the ``metadata.json`` (or ``labels.txt``) beside it."""
    from .onnx_export import Runner

    with open(path, "rb") as f:
        runner = Runner(f.read(), repr(path))
    shape, classes = runner.input.shape, runner.output.shape[-1]
    if len(shape) != 4 or not all(isinstance(n, int) for n in (*shape[1:], classes)) or shape[3] != 3:
        raise RunError(f"{path!r} is not an image classifier of transfer (input {shape}, output "
                       f"{runner.output.shape}); export the run again with --format onnx.")
    labels, resize = _beside(path, classes)
    return LoadedModel(path, "onnx", labels, (shape[1], shape[2]), resize, runner)


def _beside(path: str, classes: int) -> tuple[list[str], str]:
    """Labels and resize mode of an exported file, from the ``metadata.json`` (or ``labels.txt``) in its folder."""
    folder = os.path.dirname(os.path.abspath(path))
    info_file = os.path.join(folder, runs.TFLITE_INFO_FILE)
    info = _read_json(info_file) or {}
    labels = _info_labels(info, info_file)
    labels_from = repr(info_file)
    if labels is None:
        labels_from = repr(os.path.join(folder, runs.LABELS_FILE))
        labels = _read_labels(os.path.join(folder, runs.LABELS_FILE))
    return _checked_labels(labels, classes, path, labels_from), info.get("resize", "squash")


def _info_labels(info: dict, info_file: str) -> list[str] | None:
    """The labels an export wrote into its metadata, checked to be class names; None when it has none."""
    labels = info.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(label, str) for label in labels)):
        raise RunError(f"{info_file!r}: labels must be a list of class names; export the run again.")
    return labels


def _read_labels(path: str) -> list[str] | None:
    """labels.txt beside a lone .keras file: one label a line, blank lines left out."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise RunError(f"{path!r} cannot be read as UTF-8 text ({error}).") from None
    return [line.removesuffix("\r") for line in text.split("\n") if line.removesuffix("\r")]


def _read_json(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as error:
        raise RunError(f"{path!r} is unreadable or not JSON ({error}); export the run again.") from None
    return data if isinstance(data, dict) else None


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


def predict(model: str | LoadedModel, inputs: list[str], top_k: int = 3, batch_size: int = 32,
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


def probabilities(loaded: LoadedModel, paths: list[str], batch_size: int = 32, max_pixels: int = MAX_PIXELS):
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
