"""Where an export goes and how it is written, whatever its format.

The destination is checked before the model is converted: never inside a
dataset, nor inside a run folder other than the run's own ``export/``, and an
``OUTPUT/NAME`` folder that holds anything but transfer's exports is left alone.
Each export is written into a hidden staging folder and renamed into place, so
it is complete or absent; :func:`provenance` is what every format records.
"""

from __future__ import annotations

import json
import numbers
import os
import shutil
import uuid

from .. import inputs, outputs, runs
from ..data.audit import file_digest
from ..errors import ConfigError, RunError
from ..runners import load_model

MAX_VERSION = 2**63 - 1  # TensorFlow Serving's versions are int64


def destination(model_path: str, output: str | None, name: str | None, data: str | None, unsafe: bool = False):
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


def check_arguments(output, name, version, data) -> tuple[str | None, str | None, str | None]:
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


def write_labels(folder: str, labels: list[str]) -> None:
    runs.write_text(os.path.join(folder, runs.LABELS_FILE), "".join(f"{label}\n" for label in labels))


def _check_export_folder(base: str) -> None:
    """``OUTPUT/NAME`` is new or holds exports of transfer (version folders, tflite-*, labels.txt) and nothing else.

    Anything else is the user's: nothing is written into it, so its labels.txt is never replaced.
    """
    problem = runs.exports_problem(base)
    if problem:
        raise RunError(f"{base!r} exists and {problem}; choose another --output or --name.")


def provenance(loaded, run) -> dict:
    """What every export records: labels, input, preprocessing, backbone, training data, metrics, source, versions.

    The training data's fingerprint is the sha256 of the run's split.csv (every file, its class and split).
    """
    import keras
    import tensorflow as tf

    from .. import __version__

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


def write_folder(base: str, target: str, content: bytes, metadata: dict,
                  filename: str = runs.TFLITE_FILE) -> None:
    """Into a hidden staging folder, renamed into place: the folder is complete or absent."""
    staging = os.path.join(base, f".{os.path.basename(target)}.partial-{uuid.uuid4().hex[:12]}")
    runs.make_dirs(staging, "--output")
    try:
        with open(os.path.join(staging, filename), "wb") as f:
            f.write(content)
        write_labels(staging, metadata["labels"])
        runs.write_json(os.path.join(staging, runs.TFLITE_INFO_FILE), metadata)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
