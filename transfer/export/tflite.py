"""TensorFlow Lite: run a frozen Keras model through the TFLite interpreter and XNNPACK.

``convert`` also writes the deployable ``.tflite`` of ``transfer export --format
tflite``, float32 or quantized (``QUANTIZATIONS``).

On a CPU, TensorFlow's own kernels for depthwise convolutions (EfficientNet,
MobileNet) are slow; XNNPACK, which the TFLite interpreter uses by default, runs
the same float32 network several times faster (BENCHMARKS.md). Feature caching
uses it for the frozen part of a backbone, and only after checking on the real
images that it computes what Keras computes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from .. import inputs, runs
from ..errors import ConfigError, RunError
from ..runners import TFLiteRunner, quiet
from . import QUANTIZATIONS
from .folders import check_arguments, destination, provenance, write_folder
from .verify import (CALIBRATION_IMAGES, VERIFY_IMAGES, check_images, folder_paths, readable, split_paths,
                     verified_line, verify_tflite)

log = logging.getLogger("transfer")


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

    def summary(self) -> str:
        return verified_line(self, self.quantize)


def export(model_path: str, output: str | None = None, name: str | None = None, quantize: str = "none",
           data: str | None = None, unsafe: bool = False) -> TFLiteResult:
    """Export a run folder (or ``.keras`` file) as TensorFlow Lite, checked on real photos before it is kept.

    int8 calibrates on the run's training photos (split.csv), or on the images under ``data``.
    """
    if inputs.name(quantize, "quantize") not in QUANTIZATIONS:
        raise ConfigError(f"--quantize must be one of {', '.join(QUANTIZATIONS)}; got {quantize!r}.")
    output, name, data = check_arguments(output, name, None, data)
    loaded, source, base = destination(model_path, output, name, data, unsafe)
    target = os.path.join(base, runs.TFLITE_PREFIX + quantize)
    if os.path.lexists(target):
        raise RunError(f"{target!r} already exists; delete it to export again, or choose another --name.")
    run = runs.load_run(source) if runs.is_run_folder(source) else None
    checked_on, candidates = check_images(run, data)
    checks = readable(loaded, candidates, VERIFY_IMAGES, "validation")[1]
    calibration = calibrated_on = None
    if quantize == "int8":
        calibrated_on = f"--data {data}" if data else "the run's training images"
        calibration = readable(loaded, folder_paths(data) if data else split_paths(run, "train"),
                                CALIBRATION_IMAGES, "calibration")[1]
    log.info("converting to TensorFlow Lite (%s%s)", quantize,
             f", calibrated on {len(calibration)} images of {calibrated_on}" if calibration is not None else "")
    content = convert(loaded.keras_model, quantize, calibration)
    runner = TFLiteRunner(content)
    top1, diff = verify_tflite(loaded, runner, checks, quantize)
    result = TFLiteResult(os.path.join(target, runs.TFLITE_FILE), quantize, loaded.labels, len(checks), top1, diff,
                          len(content), checked_on, calibrated_on)
    write_folder(base, target, content, _tflite_metadata(loaded, run, runner, result))
    return result


def _tflite_metadata(loaded, run, runner, result: TFLiteResult) -> dict:
    """What an app needs beside the .tflite: labels, input size and type, and where the model came from."""
    scale, zero_point = runner.input["quantization"]
    return {"format": "tflite", **provenance(loaded, run), "quantization": result.quantize,
            "input": {"dtype": np.dtype(runner.input["dtype"]).name, "scale": float(scale),
                      "zero_point": int(zero_point), "pixels": "RGB 0-255, shape [batch, height, width, 3]"},
            "output": {"dtype": "float32", "values": "probabilities, one per label"},
            "verification": {k: v for k, v in result.to_dict().items() if k not in ("path", "labels", "quantize")}}


def convert(model, quantize: str = "none", representative: np.ndarray | None = None) -> bytes:
    """A ``.tflite`` flatbuffer of a Keras model with one image input (any batch size).

    ``representative`` (uint8 or float images 0-255) calibrates the activation ranges of ``int8``.
    """
    import tensorflow as tf

    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}; got {quantize!r}")
    # from_keras_model, not from_concrete_functions: the latter froze garbage for set_weights()'d variables here
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        if representative is None or not len(representative):
            raise ValueError("int8 needs representative images")
        calibration = [*representative, _full_range(representative[0].shape)]
        converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8  # the model's input is raw pixels: scale 1, zero point 0
        converter.inference_output_type = tf.float32
    with quiet():
        return converter.convert()


def _full_range(shape: tuple[int, ...]) -> np.ndarray:
    """Black and white halves: the input range calibrates to 0-255, so uint8 input is the pixels themselves
    (scale 1, zero point 0) whatever the photos' own range."""
    image = np.zeros(shape, np.float32)
    image[shape[0] // 2:] = 255
    return image


def agreement(expected: np.ndarray, got: np.ndarray) -> float:
    """Largest difference relative to the scale of the expected values (features have no fixed range); inf for NaN."""
    diff = float(np.max(np.abs(expected - got)) / max(1e-6, float(np.max(np.abs(expected)))))
    return diff if np.isfinite(diff) else float("inf")
