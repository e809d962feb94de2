"""Loading any artifact transfer makes into one small interface, below both prediction and export.

A :class:`LoadedModel` answers what every consumer asks: labels, input size,
resizing, and a :class:`Runner` (float32 RGB pixels 0-255 ``(n, h, w, 3)`` in,
probabilities ``(n, classes)`` out), whether the artifact is a run folder, a
``.keras`` file, a SavedModel, a ``.tflite`` (the TFLite interpreter and XNNPACK)
or an ``.onnx`` (onnxruntime). ``transfer.prediction`` predicts through it, and
``transfer.export`` checks what it wrote through it, so neither imports the other.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import warnings
import zipfile
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import inputs as inputs_, runs
from .console import silenced
from .errors import ConfigError, RunError, first_line

log = logging.getLogger("transfer")
#: the SavedModel signature that takes pixels (``transfer.export.savedmodel`` writes it under this name)
PIXELS_SIGNATURE, PIXELS_INPUT = "predict_images", "image"
INSTALL = "pip install 'transfer[onnx]'"


class Runner(Protocol):
    """What runs a loaded model: float32 RGB pixels 0-255 ``(n, h, w, 3)`` in, probabilities ``(n, classes)`` out."""

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


@dataclass
class LoadedModel:
    """A model ready to predict, whatever it was loaded from."""

    source: str
    kind: str  # "run", "keras", "savedmodel", "tflite" or "onnx"
    labels: list[str]
    image_size: tuple[int, int]
    resize: str
    predict_batch: Runner
    keras_model: object = None

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
    try:
        with open(path, "rb") as f:
            runner = TFLiteRunner(f.read())
        _, height, width, _ = runner.input["shape_signature"]
        classes = int(runner.output["shape_signature"][-1])
    except (ValueError, RuntimeError, IndexError) as error:
        raise RunError(f"{path!r} is not a valid TensorFlow Lite image model (truncated, damaged or another "
                       f"format): {first_line(error)}") from None
    labels, resize = _beside(path, classes)
    return LoadedModel(path, "tflite", labels, (int(height), int(width)), resize, runner)


def _from_onnx(path: str) -> LoadedModel:
    """An ``.onnx`` run by onnxruntime; labels and resizing from the ``metadata.json`` (or ``labels.txt``) beside it."""
    with open(path, "rb") as f:
        runner = ONNXRunner(f.read(), repr(path))
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


def quiet():
    """The converter lists every captured variable on stdout and MLIR diagnostics on stderr: keep both out (a
    failure is raised with its reason, and the caller may fall back)."""
    return silenced((1, 2), replay=False)

def _litert():
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


def _tf_lite():
    import tensorflow as tf

    return tf.lite.Interpreter


#: who runs a ``.tflite``, preferred first: LiteRT (``ai-edge-litert``, the ``litert`` extra), then TensorFlow's own
#: ``tf.lite.Interpreter``, deprecated in its favour (same kernels, same XNNPACK; BENCHMARKS.md times both)
INTERPRETERS = {"litert": _litert, "tf.lite": _tf_lite}


def interpreter(content: bytes, threads: int | None = None, name: str | None = None):
    """(name, interpreter) of a flatbuffer: the first of :data:`INTERPRETERS` that imports, or the one ``name``d.

    The one place an interpreter is made, so ``predict``, ``export``'s check and the feature engine run the same one.
    """
    if name is not None and name not in INTERPRETERS:
        raise ValueError(f"interpreter must be one of {tuple(INTERPRETERS)}; got {name!r}")
    names = [name] if name else list(INTERPRETERS)
    for candidate in names:
        try:
            cls = INTERPRETERS[candidate]()
        except ImportError:
            if candidate == names[-1]:
                raise
            continue
        with warnings.catch_warnings(), quiet():  # tf.lite announces its move to LiteRT, and XNNPACK itself
            warnings.simplefilter("ignore")
            return candidate, cls(model_content=content, num_threads=threads or os.cpu_count() or 1)


class TFLiteRunner:
    """Batches through a TFLite interpreter using every core; resizes the input only when the batch size changes."""

    STEP = 8

    def __init__(self, content: bytes, threads: int | None = None, engine: str | None = None):
        self.engine, self.interpreter = interpreter(content, threads, engine)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Small slices: XNNPACK ran 8-image batches about 1.3 times as fast as 32-image ones (BENCHMARKS.md)."""
        return np.concatenate([self._invoke(images[i:i + self.STEP]) for i in range(0, len(images), self.STEP)])

    def _invoke(self, images: np.ndarray) -> np.ndarray:
        if images.shape[0] != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], list(images.shape))
            with quiet():
                self.interpreter.allocate_tensors()
            self.batch = images.shape[0]
        self.interpreter.set_tensor(self.input["index"], _quantized(images, self.input))
        self.interpreter.invoke()
        output = self.interpreter.get_tensor(self.output["index"])
        scale, zero_point = self.output["quantization"]
        if np.issubdtype(output.dtype, np.integer):
            return (output.astype(np.float32) - zero_point) * scale
        return output.copy()


def _quantized(images: np.ndarray, detail: dict) -> np.ndarray:
    """Float images as the input tensor takes them: unchanged for float, ``round(x / scale) + zero_point`` for int."""
    dtype = detail["dtype"]
    if not np.issubdtype(dtype, np.integer):
        return np.ascontiguousarray(images, dtype=dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(images / (scale or 1.0)) + zero_point, info.min, info.max).astype(dtype)

def require(module: str):
    """Import one package of the ``onnx`` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ConfigError(f"ONNX needs the optional packages tf2onnx, onnx and onnxruntime ({first_line(error)}); "
                          f"install them with: {INSTALL}") from None

class ONNXRunner:
    """An onnxruntime session on the CPU using every core: float32 pixels in, probabilities out."""

    def __init__(self, content: bytes, what: str = "the model", threads: int | None = None):
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.log_severity_level = 3  # errors only: it warns about every unused initializer
        try:
            self.session = ort.InferenceSession(content, options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's own exception types are not exported
            raise RunError(f"{what}: onnxruntime {ort.__version__} cannot load the ONNX model: "
                           f"{first_line(error)}") from None
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.session.run([self.output.name], {self.input.name: np.ascontiguousarray(images, np.float32)})[0]
