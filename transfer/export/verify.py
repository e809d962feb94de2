"""Deployment formats, each checked against the Keras model it came from.

``export`` writes a TensorFlow Serving layout ``DIR/<name>/<version>/``: a
SavedModel whose ``serving_default`` takes encoded images and
``predict_images`` float pixels, both returning probabilities and the top-k
labels (:mod:`transfer.savedmodel`). Labels, ``metadata.json`` and the marker
``transfer.json`` travel inside it (``assets.extra/``, which TF Serving
ignores), and labels.txt beside it. It is kept only if it agrees with the Keras
model on the run's own validation photos (``THRESHOLDS``, ``BYTES_TOP1``).

``export_tflite`` writes ``DIR/<name>/tflite-<quantize>/`` with ``model.tflite``,
``labels.txt`` and ``metadata.json``, kept only if the ``.tflite`` agrees with
the Keras model on the run's own validation photos (``THRESHOLDS``).
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import shutil
import uuid
from dataclasses import dataclass

import numpy as np

from . import inputs, outputs, runs
from .audit import file_digest
from .errors import ConfigError, ImageError, RunError
from .images import is_image_name, load_image
from .predict import load_model

log = logging.getLogger("transfer")
MAX_VERSION = 2**63 - 1  # TensorFlow Serving's versions are int64
#: --quantize: (least top-1 agreement with the Keras model, largest |Δp| or None) on the validation sample
THRESHOLDS = {"none": (1.0, 1e-3), "float16": (0.99, None), "dynamic": (0.95, None), "int8": (0.95, None)}
#: least top-1 agreement of the SavedModel's bytes signature (decoding in the graph) with predict (Pillow)
BYTES_TOP1 = 0.99
VERIFY_IMAGES = 64
CALIBRATION_IMAGES = 160


@dataclass
class ExportResult:
    path: str  # the version folder, DIR/<name>/<version>
    version: int
    labels: list[str]
    images: int  # validation photos the SavedModel and the Keras model were compared on
    top1_agreement: float  # predict_images (the same pixels) against Keras
    max_abs_diff: float  # of predict_images' probabilities from Keras'
    bytes_top1_agreement: float  # serving_default (the files' bytes, decoded in the graph) against transfer predict
    bytes_max_abs_diff: float
    size: int  # bytes of the version folder
    checked_on: str = ""  # where the images came from: the run's validation images, or --data

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TFLiteResult:
    path: str  # the .tflite file
    quantize: str
    labels: list[str]
    images: int  # validation images the .tflite and the Keras model were compared on
    top1_agreement: float
    max_abs_diff: float
    size: int  # bytes of the .tflite
    checked_on: str = ""  # where the images came from: the run's validation images, or --data
    calibrated_on: str | None = None  # int8: where the calibration images came from

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def export(model_path: str, output: str | None = None, name: str | None = None,
           version: int | None = None, data: str | None = None, unsafe: bool = False) -> ExportResult:
    """Export a run folder (or ``.keras`` file) as a SavedModel for TensorFlow Serving, checked on real photos.

    The check runs on the run's validation photos (split.csv), or on the images under ``data``.
    ``unsafe``: load a ``.keras`` file outside Keras' safe mode (see :func:`transfer.predict.load_model`).
    """
    from . import savedmodel

    output, name, data = _check_arguments(output, name, version, data)
    loaded, source, base = _destination(model_path, output, name, data, unsafe)
    version = version or _next_version(base)
    target = os.path.join(base, str(version))
    if os.path.exists(target):
        raise RunError(f"{target!r} already exists; choose another --version.")
    run = runs.load_run(source) if runs.is_run_folder(source) else None
    checked_on, candidates = check_images(run, data)
    paths, images = _readable(loaded, candidates, VERIFY_IMAGES, "validation")
    staging = os.path.join(base, f".{version}.partial-{uuid.uuid4().hex[:12]}")  # a name nobody else uses
    runs.make_dirs(staging, "--output")
    try:
        log.info("writing the SavedModel")
        savedmodel.write(loaded.keras_model, staging, loaded.labels, loaded.resize)
        result = verify_saved_model(loaded, staging, paths, images)
        result.path, result.version, result.checked_on = target, version, checked_on
        _write_extras(staging, loaded, run, result)
        result.size = _folder_size(staging)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_labels(base, loaded.labels)
    return result


def export_tflite(model_path: str, output: str | None = None, name: str | None = None, quantize: str = "none",
                  data: str | None = None, unsafe: bool = False) -> TFLiteResult:
    """Export a run folder (or ``.keras`` file) as TensorFlow Lite, checked on real photos before it is kept.

    int8 calibrates on the run's training photos (split.csv), or on the images under ``data``.
    """
    from . import tflite

    if inputs.name(quantize, "quantize") not in tflite.QUANTIZATIONS:
        raise ConfigError(f"--quantize must be one of {', '.join(tflite.QUANTIZATIONS)}; got {quantize!r}.")
    output, name, data = _check_arguments(output, name, None, data)
    loaded, source, base = _destination(model_path, output, name, data, unsafe)
    target = os.path.join(base, runs.TFLITE_PREFIX + quantize)
    if os.path.lexists(target):
        raise RunError(f"{target!r} already exists; delete it to export again, or choose another --name.")
    run = runs.load_run(source) if runs.is_run_folder(source) else None
    checked_on, candidates = check_images(run, data)
    checks = _readable(loaded, candidates, VERIFY_IMAGES, "validation")[1]
    calibration = calibrated_on = None
    if quantize == "int8":
        calibrated_on = f"--data {data}" if data else "the run's training images"
        calibration = _readable(loaded, _folder_paths(data) if data else _split_paths(run, "train"),
                                CALIBRATION_IMAGES, "calibration")[1]
    log.info("converting to TensorFlow Lite (%s%s)", quantize,
             f", calibrated on {len(calibration)} images of {calibrated_on}" if calibration is not None else "")
    content = tflite.convert(loaded.keras_model, quantize, calibration)
    runner = tflite.Runner(content)
    top1, diff = verify_tflite(loaded, runner, checks, quantize)
    result = TFLiteResult(os.path.join(target, runs.TFLITE_FILE), quantize, loaded.labels, len(checks), top1, diff,
                          len(content), checked_on, calibrated_on)
    _write_tflite(base, target, content, _tflite_metadata(loaded, run, runner, result))
    return result


def _destination(model_path: str, output: str | None, name: str | None, data: str | None, unsafe: bool = False):
    """The loaded Keras model, the run folder (or .keras file's folder) it came from, and ``OUTPUT/NAME``, checked:
    never in a dataset (``data``, the run's own), nor in a run folder other than this run's ``export/``."""
    loaded = load_model(model_path, unsafe)
    if loaded.keras_model is None:
        raise RunError(f"{model_path!r} is already an exported model; export a run folder or .keras file.")
    model_path = inputs.path(model_path, "model")
    source = model_path if loaded.kind == "run" else os.path.dirname(os.path.abspath(model_path))
    if name is None:
        name = os.path.basename(os.path.normpath(source if loaded.kind == "run" else os.path.splitext(model_path)[0]))
    output = output if output is not None else os.path.join(source, runs.EXPORTS_FOLDER)
    base = os.path.join(output, runs.check_name(name))
    runs.check_writable(output, "--output")
    outputs.check_output(output, "--output", datasets=[data], run=outputs.run_of(model_path),
                         own=[os.path.join(source, runs.EXPORTS_FOLDER)])
    _check_export_folder(base)
    return loaded, source, base


def _check_arguments(output, name, version, data) -> tuple[str | None, str | None, str | None]:
    """(output, name, data) as text, and what can be checked before the model (and TensorFlow with it) is loaded."""
    output, data = inputs.path(output, "output", optional=True), inputs.path(data, "data", optional=True)
    name = inputs.name(name, "name", optional=True)
    if data is not None and not os.path.isdir(data):
        raise ConfigError(f"--data {data!r} is not a folder of images.")
    if version is not None and (isinstance(version, bool) or not isinstance(version, numbers.Integral)
                                or not 1 <= version <= MAX_VERSION):
        raise ConfigError(f"--version must be a whole number from 1 to {MAX_VERSION}; got {version!r}.")
    if name is not None:
        runs.check_name(name)
    if output is not None:
        runs.check_writable(output, "--output")
    return output, name, data


def _write_labels(folder: str, labels: list[str]) -> None:
    runs.write_text(os.path.join(folder, runs.LABELS_FILE), "".join(f"{label}\n" for label in labels))


def _check_export_folder(base: str) -> None:
    """``OUTPUT/NAME`` is new or holds exports of transfer (version folders, tflite-*, labels.txt) and nothing else.

    Anything else is the user's: nothing is written into it, so its labels.txt is never replaced.
    """
    problem = runs.exports_problem(base)
    if problem:
        raise RunError(f"{base!r} exists and {problem}; choose another --output or --name.")


def _next_version(base: str) -> int:
    versions = [int(d) for d in os.listdir(base) if d.isdigit()] if os.path.isdir(base) else []
    return max(versions, default=0) + 1


def verify_saved_model(loaded, path: str, paths: list[str], images: np.ndarray) -> ExportResult:
    """Both signatures of the SavedModel at ``path`` against the Keras model on real photos; raise below thresholds.

    ``predict_images`` gets the pixels Keras got (``images``, decoded from
    ``paths`` as predict does); ``serving_default`` gets the files' bytes.
    """
    import tensorflow as tf

    from . import savedmodel

    signatures = tf.saved_model.load(path).signatures
    expected = _in_batches(loaded.predict_batch, images)
    pixels = _in_batches(lambda batch: signatures[savedmodel.PIXELS_SIGNATURE](
        **{savedmodel.PIXELS_INPUT: tf.constant(batch)}), images)
    encoded = np.array([_read_bytes(p) for p in paths], dtype=object)
    from_bytes = _in_batches(lambda batch: signatures[savedmodel.BYTES_SIGNATURE](
        **{savedmodel.BYTES_INPUT: tf.constant(batch, tf.string)}), encoded)
    result = ExportResult(path, 0, loaded.labels, len(images), *_agreement(expected, pixels["probabilities"]),
                          *_agreement(expected, from_bytes["probabilities"]), 0)
    least, most = THRESHOLDS["none"]
    problem = None
    if result.top1_agreement < least or not result.max_abs_diff < most:
        problem = (f"its predict_images signature disagrees with the Keras model (top-1 agreement "
                   f"{result.top1_agreement:.1%}, max |Δp| {result.max_abs_diff:.2g}; needed {least:.0%} and "
                   f"below {most:g})")
    elif result.bytes_top1_agreement < BYTES_TOP1:
        problem = (f"its serving_default signature (decoding the files in the graph) agrees with transfer predict "
                   f"on only {result.bytes_top1_agreement:.1%} of them (needed {BYTES_TOP1:.0%})")
    elif [row[0].decode() for row in pixels["classes"]] != [loaded.labels[i] for i in np.argmax(expected, -1)]:
        problem = "its classes output does not name the labels of the run"
    if problem:
        raise RunError(f"the exported SavedModel was checked on {len(images)} validation images and {problem}; "
                       "nothing was written.")
    return result


def _in_batches(run, inputs: np.ndarray, size: int = 16):
    """``run`` over slices of ``inputs``, its outputs (an array, or a dict of tensors) joined back together."""
    parts = [run(inputs[i:i + size]) for i in range(0, len(inputs), size)]
    if not isinstance(parts[0], dict):
        return np.concatenate([np.asarray(p) for p in parts])
    return {key: np.concatenate([p[key].numpy() for p in parts]).tolist() if key == "classes"
            else np.concatenate([p[key].numpy() for p in parts]) for key in parts[0]}


def _agreement(expected: np.ndarray, got) -> tuple[float, float]:
    """Top-1 agreement and the largest |Δp| (inf for NaN) of ``got`` with ``expected``."""
    got = np.asarray(got)
    diff = float(np.max(np.abs(expected - got)))
    return float(np.mean(np.argmax(expected, -1) == np.argmax(got, -1))), diff if np.isfinite(diff) else float("inf")


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_extras(path: str, loaded, run, result: ExportResult) -> None:
    """assets.extra/ of the SavedModel: labels.txt, metadata.json, and transfer.json (what predict reads)."""
    from . import savedmodel

    extra = os.path.join(path, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    _write_labels(extra, loaded.labels)
    height, width = loaded.image_size
    signatures = {savedmodel.BYTES_SIGNATURE: {"input": savedmodel.BYTES_INPUT, "dtype": "string", "shape": [None],
                                               "formats": list(savedmodel.MAGIC)},
                  savedmodel.PIXELS_SIGNATURE: {"input": savedmodel.PIXELS_INPUT, "dtype": "float32",
                                                "shape": [None, height, width, 3], "pixels": "RGB 0-255"}}
    verification = {k: v for k, v in result.to_dict().items() if k not in ("path", "version", "labels", "size")}
    runs.write_json(os.path.join(extra, runs.TFLITE_INFO_FILE),
                    {"format": "saved_model", **provenance(loaded, run), "signatures": signatures,
                     "outputs": {"probabilities": "float32 [N, classes]",
                                 "classes": f"string [N, {min(savedmodel.TOP_K, len(loaded.labels))}], best first",
                                 "scores": "float32, the probabilities of classes"},
                     "verification": verification})
    runs.write_json(os.path.join(extra, runs.EXPORT_INFO_FILE),
                    {"labels": loaded.labels, "image_size": [height, width], "resize": loaded.resize,
                     "input": savedmodel.PIXELS_INPUT, "output": "probabilities",
                     "source": os.path.abspath(loaded.source)})


def _folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _split_paths(run, split: str) -> list[str]:
    """The run's images of one split (split.csv) that still exist where the run found them."""
    from .data import read_manifest

    if run is None or not os.path.isfile(os.path.join(run.path, runs.SPLIT_FILE)):
        return []
    root = run.record.get("data", {}).get("root", "")
    try:
        examples = read_manifest(os.path.join(run.path, runs.SPLIT_FILE), root, run.labels).get(split, [])
    except (OSError, ValueError, KeyError) as error:
        raise RunError(f"{run.path!r}: {runs.SPLIT_FILE} is unreadable ({error}); pass --data.") from None
    return [e.path for e in examples if os.path.isfile(e.path)]


def check_images(run, data: str | None) -> tuple[str, list[str]]:
    """(where they come from, paths) of the images an export is checked on: those under ``data`` when it is given,
    else the run's validation images."""
    if data is not None:
        paths = _folder_paths(data)
        if not paths:
            raise ConfigError(f"--data {data!r} holds no image files to check the export on; give a folder of images.")
        return f"--data {data}", paths
    return "the run's validation images", _split_paths(run, "val")


def _folder_paths(folder: str | None) -> list[str]:
    if folder is None:
        return []
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                  if is_image_name(f) and not f.startswith("."))


def _readable(loaded, paths: list[str], count: int, what: str) -> tuple[list[str], np.ndarray]:
    """Up to ``count`` of ``paths`` (a seeded sample) that decode, and their pixels as the model sees them."""
    if len(paths) > count:
        paths = [paths[i] for i in sorted(np.random.default_rng(0).choice(len(paths), count, replace=False))]
    kept, images = [], []
    for path in paths:
        try:
            images.append(load_image(path, loaded.image_size, loaded.resize))
            kept.append(path)
        except ImageError:
            continue
    if not images:
        raise RunError(f"no {what} images found (the run's split.csv lists none that can still be read); "
                       "pass --data with a folder of images like the ones the model will see.")
    return kept, np.stack(images).astype(np.float32)


def agreement(loaded, runner, images: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and largest |Δp| between an exported artifact's ``runner`` and the Keras model on ``images``."""
    return _agreement(_in_batches(loaded.predict_batch, images), runner(images))


def verify_tflite(loaded, runner, images: np.ndarray, quantize: str) -> tuple[float, float]:
    """Top-1 agreement and largest |Δp| between the .tflite and Keras on ``images``; raise below ``THRESHOLDS``."""
    top1, diff = agreement(loaded, runner, images)
    least, most = THRESHOLDS[quantize]
    if not np.isfinite(diff) or top1 < least or (most is not None and diff >= most):
        limit = f" and max |Δp| below {most:g}" if most is not None else ""
        raise RunError(f"the {quantize} .tflite disagrees with the Keras model on {len(images)} images "
                       f"(top-1 agreement {top1:.1%}, max |Δp| {diff:.2g}; needed {least:.0%}{limit}); "
                       "nothing was written. Try a lighter --quantize.")
    return top1, diff


def _tflite_metadata(loaded, run, runner, result: TFLiteResult) -> dict:
    """What an app needs beside the .tflite: labels, input size and type, and where the model came from."""
    scale, zero_point = runner.input["quantization"]
    return {"format": "tflite", **provenance(loaded, run), "quantization": result.quantize,
            "input": {"dtype": np.dtype(runner.input["dtype"]).name, "scale": float(scale),
                      "zero_point": int(zero_point), "pixels": "RGB 0-255, shape [batch, height, width, 3]"},
            "output": {"dtype": "float32", "values": "probabilities, one per label"},
            "verification": {k: v for k, v in result.to_dict().items() if k not in ("path", "labels", "quantize")}}


def provenance(loaded, run) -> dict:
    """What every export records: labels, input, preprocessing, backbone, training data, metrics, source, versions.

    The training data's fingerprint is the sha256 of the run's split.csv (every file, its class and split).
    """
    import keras
    import tensorflow as tf

    from . import __version__

    record = run.record if run is not None else {}
    split = os.path.join(run.path, runs.SPLIT_FILE) if run is not None else None
    data = record.get("data", {})
    return {"labels": loaded.labels, "image_size": list(loaded.image_size), "resize": loaded.resize,
            "preprocessing": {"inside_model": True, "backbone": record.get("model", {}).get("preprocessing")},
            "backbone": record.get("config", {}).get("backbone"),
            "training_data": {"root": data.get("root"), "counts": data.get("counts"),
                              "split_sha256": file_digest(split, "sha256") if split and os.path.isfile(split) else None},
            "metrics": _json_or_none(os.path.join(run.path, runs.METRICS_FILE)) if run is not None else None,
            "source": os.path.abspath(run.path if run is not None else loaded.source),
            "versions": {"transfer": __version__, "tensorflow": tf.__version__, "keras": keras.__version__}}


def _json_or_none(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_tflite(base: str, target: str, content: bytes, metadata: dict,
                  filename: str = runs.TFLITE_FILE) -> None:
    """Into a hidden staging folder, renamed into place: the folder is complete or absent."""
    staging = os.path.join(base, f".{os.path.basename(target)}.partial-{uuid.uuid4().hex[:12]}")
    runs.make_dirs(staging, "--output")
    try:
        with open(os.path.join(staging, filename), "wb") as f:
            f.write(content)
        _write_labels(staging, metadata["labels"])
        runs.write_json(os.path.join(staging, runs.TFLITE_INFO_FILE), metadata)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
