"""Deployment formats, each checked against the Keras model it came from.

``export`` writes a TensorFlow Serving layout ``DIR/<name>/<version>/`` whose
``serving_default`` signature takes ``image`` (float32 RGB pixels 0-255 at the
model's size; preprocessing is inside) and returns ``probabilities``. Names
are fixed with ``keras.export.ExportArchive``: plain ``model.export`` names the
input from a global layer counter. Labels travel inside the SavedModel
(``assets.extra/``, which TF Serving ignores) and beside it.
"""

from __future__ import annotations

import numbers
import os
import shutil
import uuid
from dataclasses import dataclass

import numpy as np

from . import runs
from .errors import ConfigError, RunError
from .predict import load_model

TOLERANCE = 1e-4
MAX_VERSION = 2**63 - 1  # TensorFlow Serving's versions are int64


@dataclass
class ExportResult:
    path: str  # the version folder, DIR/<name>/<version>
    version: int
    labels: list[str]
    max_abs_diff: float  # between the SavedModel and the Keras model on a probe batch


def export(model_path: str, output: str | None = None, name: str | None = None,
           version: int | None = None) -> ExportResult:
    """Export a run folder (or ``.keras`` file) as a SavedModel for TensorFlow Serving, verified."""
    _check_arguments(output, name, version)
    loaded = load_model(model_path)
    if loaded.keras_model is None:
        raise RunError(f"{model_path!r} is already an exported SavedModel; export a run folder or .keras file.")
    model_path = os.fspath(model_path)
    source = model_path if loaded.kind == "run" else os.path.dirname(os.path.abspath(model_path))
    if name is None:
        name = os.path.basename(os.path.normpath(source if loaded.kind == "run" else os.path.splitext(model_path)[0]))
    output = os.fspath(output) if output is not None else os.path.join(source, runs.EXPORTS_FOLDER)
    base = os.path.join(output, runs.check_name(name))
    runs.check_writable(output, "--output")
    _check_export_folder(base)
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
    runs.write_text(os.path.join(base, runs.LABELS_FILE), "".join(f"{label}\n" for label in loaded.labels))
    return ExportResult(target, version, loaded.labels, diff)


def _check_arguments(output: str | None, name: str | None, version: int | None) -> None:
    """What can be checked before the model (and TensorFlow with it) is loaded."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, numbers.Integral)
                                or not 1 <= version <= MAX_VERSION):
        raise ConfigError(f"--version must be a whole number from 1 to {MAX_VERSION}; got {version!r}.")
    if name is not None:
        runs.check_name(name)
    if output is not None:
        runs.check_writable(os.fspath(output), "--output")


def _check_export_folder(base: str) -> None:
    """``OUTPUT/NAME`` is new or holds exports of transfer (version folders and labels.txt) and nothing else.

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
    runs.write_text(os.path.join(extra, runs.LABELS_FILE), "".join(f"{label}\n" for label in loaded.labels))
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
