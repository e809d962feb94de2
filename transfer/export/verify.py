"""The one verification step: an export is kept only if it agrees with the Keras model it came from.

Agreement is measured on real photos (the run's validation images from
split.csv, or ``--data``): top-1 agreement and the largest difference in
probability, against ``THRESHOLDS`` for each quantization (``none`` for
SavedModel and ONNX too) and ``BYTES_TOP1`` for the SavedModel's in-graph decoding.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from .. import runs
from ..data.images import is_image_name, load_image
from ..errors import ConfigError, ImageError, RunError

log = logging.getLogger("transfer")


#: --quantize: (least top-1 agreement with the Keras model, largest |Δp| or None) on the validation sample
THRESHOLDS = {"none": (1.0, 1e-3), "float16": (0.99, None), "dynamic": (0.95, None), "int8": (0.95, None)}


#: least top-1 agreement of the SavedModel's bytes signature (decoding in the graph) with predict (Pillow)
BYTES_TOP1 = 0.99


VERIFY_IMAGES = 64


CALIBRATION_IMAGES = 160


def check_images(run, data: str | None) -> tuple[str, list[str]]:
    """(where they come from, paths) of the images an export is checked on: those under ``data`` when it is given,
    else the run's validation images."""
    if data is not None:
        paths = folder_paths(data)
        if not paths:
            raise ConfigError(f"--data {data!r} holds no image files to check the export on; give a folder of images.")
        return f"--data {data}", paths
    return "the run's validation images", split_paths(run, "val")


def split_paths(run, split: str) -> list[str]:
    """The run's images of one split (split.csv) that still exist where the run found them."""
    from ..data import read_manifest

    if run is None or not os.path.isfile(os.path.join(run.path, runs.SPLIT_FILE)):
        return []
    root = run.record.get("data", {}).get("root", "")
    try:
        examples = read_manifest(os.path.join(run.path, runs.SPLIT_FILE), root, run.labels).get(split, [])
    except (OSError, ValueError, KeyError) as error:
        raise RunError(f"{run.path!r}: {runs.SPLIT_FILE} is unreadable ({error}); pass --data.") from None
    return [e.path for e in examples if os.path.isfile(e.path)]


def folder_paths(folder: str | None) -> list[str]:
    if folder is None:
        return []
    return sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
                  if is_image_name(f) and not f.startswith("."))


def readable(loaded, paths: list[str], count: int, what: str) -> tuple[list[str], np.ndarray]:
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
    return compare(in_batches(loaded.predict_batch, images), runner(images))


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


def verify_onnx(loaded, runner, images: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement and largest |Δp| between onnxruntime and Keras on ``images``; raise below the float32 bar."""
    top1, diff = agreement(loaded, runner, images)
    least, most = THRESHOLDS["none"]
    if not np.isfinite(diff) or top1 < least or diff >= most:
        raise RunError(f"the ONNX model disagrees with the Keras model on {len(images)} images (top-1 agreement "
                       f"{top1:.1%}, max |Δp| {diff:.2g}; needed {least:.0%} and below {most:g}); nothing was "
                       "written. Use --format saved_model or tflite.")
    return top1, diff


def verified_line(result, what: str) -> str:
    """One line for the terminal about a single-file export: where it went and how well it agreed."""
    calibrated = getattr(result, "calibrated_on", None)
    return (f"exported: {result.path} ({result.size / 2**20:.2f} MiB, {what}"
            f"{f', calibrated on {calibrated}' if calibrated else ''}); on {result.images} images of "
            f"{result.checked_on}: top-1 agreement with the Keras model {result.top1_agreement:.1%}, "
            f"max |Δp| {result.max_abs_diff:.2g}")


def in_batches(run, inputs: np.ndarray, size: int = 16):
    """``run`` over slices of ``inputs``, its outputs (an array, or a dict of tensors) joined back together."""
    parts = [run(inputs[i:i + size]) for i in range(0, len(inputs), size)]
    if not isinstance(parts[0], dict):
        return np.concatenate([np.asarray(p) for p in parts])
    return {key: np.concatenate([p[key].numpy() for p in parts]).tolist() if key == "classes"
            else np.concatenate([p[key].numpy() for p in parts]) for key in parts[0]}


def compare(expected: np.ndarray, got) -> tuple[float, float]:
    """Top-1 agreement and the largest |Δp| (inf for NaN) of ``got`` with ``expected``."""
    got = np.asarray(got)
    diff = float(np.max(np.abs(expected - got)))
    return float(np.mean(np.argmax(expected, -1) == np.argmax(got, -1))), diff if np.isfinite(diff) else float("inf")
