"""Deployment formats, each checked against the Keras model it came from.

``export`` writes a TensorFlow Serving layout ``DIR/<name>/<version>/`` whose
``serving_default`` signature takes ``image`` (float32 RGB pixels 0-255 at the
model's size; preprocessing is inside) and returns ``probabilities``. Names
are fixed with ``keras.export.ExportArchive``: plain ``model.export`` names the
input from a global layer counter. Labels travel inside the SavedModel
(``assets.extra/``, which TF Serving ignores) and beside it.

``export_tflite`` writes ``DIR/<name>/tflite-<quantize>/`` with ``model.tflite``,
``labels.txt`` and ``metadata.json``, kept only if the ``.tflite`` agrees with
the Keras model on the run's own validation photos (``THRESHOLDS``).
"""

from __future__ import annotations

import logging
import numbers
import os
import shutil
import uuid
from dataclasses import dataclass

import numpy as np

from . import runs
from .errors import ConfigError, ImageError, RunError
from .images import is_image_name, load_image
from .predict import load_model

log = logging.getLogger("transfer")
TOLERANCE = 1e-4
MAX_VERSION = 2**63 - 1  # TensorFlow Serving's versions are int64
#: --quantize: (least top-1 agreement with the Keras model, largest |Δp| or None) on the validation sample
THRESHOLDS = {"none": (1.0, 1e-3), "float16": (0.99, None), "dynamic": (0.95, None), "int8": (0.95, None)}
VERIFY_IMAGES = 64
CALIBRATION_IMAGES = 160


@dataclass
class ExportResult:
    path: str  # the version folder, DIR/<name>/<version>
    version: int
    labels: list[str]
    max_abs_diff: float  # between the SavedModel and the Keras model on a probe batch


@dataclass
class TFLiteResult:
    path: str  # the .tflite file
    quantize: str
    labels: list[str]
    images: int  # validation images the .tflite and the Keras model were compared on
    top1_agreement: float
    max_abs_diff: float
    size: int  # bytes of the .tflite

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def export(model_path: str, output: str | None = None, name: str | None = None,
           version: int | None = None, unsafe: bool = False) -> ExportResult:
    """Export a run folder (or ``.keras`` file) as a SavedModel for TensorFlow Serving, verified.

    ``unsafe``: load a ``.keras`` file outside Keras' safe mode (see :func:`transfer.predict.load_model`).
    """
    _check_arguments(output, name, version)
    loaded, _, base = _destination(model_path, output, name, unsafe)
    version = version or _next_version(base)
    target = os.path.join(base, str(version))
    if os.path.exists(target):
        raise RunError(f"{target!r} already exists; choose another --version.")
    staging = os.path.join(base, f".{version}.partial-{uuid.uuid4().hex[:12]}")  # a name nobody else uses
    runs.make_dirs(staging, "--output")
    try:
        _write_saved_model(loaded, staging)
        diff = verify_saved_model(loaded, staging)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_labels(base, loaded.labels)
    return ExportResult(target, version, loaded.labels, diff)


def export_tflite(model_path: str, output: str | None = None, name: str | None = None, quantize: str = "none",
                  data: str | None = None, unsafe: bool = False) -> TFLiteResult:
    """Export a run folder (or ``.keras`` file) as TensorFlow Lite, checked on real photos before it is kept.

    int8 calibrates on the run's training photos (split.csv), or on the images under ``data``.
    """
    from . import tflite

    if quantize not in tflite.QUANTIZATIONS:
        raise ConfigError(f"--quantize must be one of {', '.join(tflite.QUANTIZATIONS)}; got {quantize!r}.")
    if data is not None and not os.path.isdir(data):
        raise ConfigError(f"--data {data!r} is not a folder of images.")
    _check_arguments(output, name, None)
    loaded, source, base = _destination(model_path, output, name, unsafe)
    target = os.path.join(base, runs.TFLITE_PREFIX + quantize)
    if os.path.lexists(target):
        raise RunError(f"{target!r} already exists; delete it to export again, or choose another --name.")
    run = runs.load_run(source) if runs.is_run_folder(source) else None
    checks = _photos(loaded, _split_paths(run, "val") or _folder_paths(data), VERIFY_IMAGES, "validation")
    calibration = None
    if quantize == "int8":
        calibration = _photos(loaded, _folder_paths(data) if data else _split_paths(run, "train"),
                              CALIBRATION_IMAGES, "calibration")
    log.info("converting to TensorFlow Lite (%s%s)", quantize,
             f", calibrated on {len(calibration)} images" if calibration is not None else "")
    content = tflite.convert(loaded.keras_model, quantize, calibration)
    runner = tflite.Runner(content)
    top1, diff = verify_tflite(loaded, runner, checks, quantize)
    result = TFLiteResult(os.path.join(target, runs.TFLITE_FILE), quantize, loaded.labels, len(checks), top1, diff,
                          len(content))
    _write_tflite(base, target, content, _tflite_metadata(loaded, run, runner, result))
    return result


def _destination(model_path: str, output: str | None, name: str | None, unsafe: bool = False):
    """The loaded Keras model, the run folder (or .keras file's folder) it came from, and ``OUTPUT/NAME``, checked."""
    loaded = load_model(model_path, unsafe)
    if loaded.keras_model is None:
        raise RunError(f"{model_path!r} is already an exported model; export a run folder or .keras file.")
    model_path = os.fspath(model_path)
    source = model_path if loaded.kind == "run" else os.path.dirname(os.path.abspath(model_path))
    if name is None:
        name = os.path.basename(os.path.normpath(source if loaded.kind == "run" else os.path.splitext(model_path)[0]))
    output = os.fspath(output) if output is not None else os.path.join(source, runs.EXPORTS_FOLDER)
    base = os.path.join(output, runs.check_name(name))
    runs.check_writable(output, "--output")
    _check_export_folder(base)
    return loaded, source, base


def _check_arguments(output: str | None, name: str | None, version: int | None) -> None:
    """What can be checked before the model (and TensorFlow with it) is loaded."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, numbers.Integral)
                                or not 1 <= version <= MAX_VERSION):
        raise ConfigError(f"--version must be a whole number from 1 to {MAX_VERSION}; got {version!r}.")
    if name is not None:
        runs.check_name(name)
    if output is not None:
        runs.check_writable(os.fspath(output), "--output")


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


def _write_saved_model(loaded, path: str) -> None:
    import keras
    import tensorflow as tf

    model = loaded.keras_model
    height, width = loaded.image_size
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(image):
        return {"probabilities": model(image, training=False)}

    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec((None, height, width, 3), tf.float32, name="image")])
    archive.write_out(path, verbose=False)
    extra = os.path.join(path, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    _write_labels(extra, loaded.labels)
    runs.write_json(os.path.join(extra, runs.EXPORT_INFO_FILE),
                    {"labels": loaded.labels, "image_size": [height, width], "resize": loaded.resize,
                     "input": "image", "output": "probabilities", "source": os.path.abspath(loaded.source)})


def verify_saved_model(loaded, path: str) -> float:
    """Largest difference between SavedModel and Keras probabilities on random images; raise if too large."""
    reloaded = load_model(path)
    height, width = loaded.image_size
    probe = np.random.default_rng(0).uniform(0, 255, (4, height, width, 3)).astype(np.float32)
    diff = float(np.max(np.abs(reloaded.predict_batch(probe) - loaded.predict_batch(probe))))
    if diff > TOLERANCE:
        raise RunError(f"the exported SavedModel disagrees with the Keras model (max difference {diff:.2g}); "
                       "nothing was written.")
    return diff


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


def _folder_paths(folder: str | None) -> list[str]:
    if folder is None:
        return []
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                  if is_image_name(f) and not f.startswith("."))


def _photos(loaded, paths: list[str], count: int, what: str) -> np.ndarray:
    """Up to ``count`` of ``paths`` (a seeded sample), decoded as the model sees them; unreadable ones left out."""
    if len(paths) > count:
        paths = [paths[i] for i in sorted(np.random.default_rng(0).choice(len(paths), count, replace=False))]
    images = []
    for path in paths:
        try:
            images.append(load_image(path, loaded.image_size, loaded.resize))
        except ImageError:
            continue
    if not images:
        raise RunError(f"no {what} images found (the run's split.csv lists none that can still be read); "
                       "pass --data with a folder of images like the ones the model will see.")
    return np.stack(images).astype(np.float32)


def agreement(loaded, runner, images: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and largest |Δp| between an exported artifact's ``runner`` and the Keras model on ``images``."""
    expected = np.concatenate([loaded.predict_batch(images[i:i + 16]) for i in range(0, len(images), 16)])
    got = runner(images)
    return float(np.mean(np.argmax(expected, -1) == np.argmax(got, -1))), float(np.max(np.abs(expected - got)))


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
    return {"format": "tflite", "labels": loaded.labels, "image_size": list(loaded.image_size),
            "resize": loaded.resize, "quantization": result.quantize,
            "input": {"dtype": np.dtype(runner.input["dtype"]).name, "scale": float(scale),
                      "zero_point": int(zero_point), "pixels": "RGB 0-255, shape [batch, height, width, 3]"},
            "output": {"dtype": "float32", "values": "probabilities, one per label"},
            "verification": {k: v for k, v in result.to_dict().items() if k not in ("path", "labels", "quantize")},
            **provenance(loaded, run)}


def provenance(loaded, run) -> dict:
    """The part of an export's metadata.json that says where it came from: preprocessing, source, versions."""
    import keras
    import tensorflow as tf

    from . import __version__

    preprocessing = run.record["model"].get("preprocessing") if run is not None else None
    return {"preprocessing": {"inside_model": True, "backbone": preprocessing},
            "source": os.path.abspath(run.path if run is not None else loaded.source),
            "versions": {"transfer": __version__, "tensorflow": tf.__version__, "keras": keras.__version__}}


def _write_tflite(base: str, target: str, content: bytes, metadata: dict, filename: str = runs.TFLITE_FILE) -> None:
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
