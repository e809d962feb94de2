"""TensorFlow Lite: run a frozen Keras model through the TFLite interpreter (LiteRT's, where installed) and XNNPACK.

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
import warnings

import numpy as np

from .console import silenced

log = logging.getLogger("transfer")


#: --quantize: what each stores. int8 takes uint8 pixels (0-255, as a camera gives them) and returns float32
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")


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
    with _quiet():
        return converter.convert()


def _full_range(shape: tuple[int, ...]) -> np.ndarray:
    """Black and white halves: the input range calibrates to 0-255, so uint8 input is the pixels themselves
    (scale 1, zero point 0) whatever the photos' own range."""
    image = np.zeros(shape, np.float32)
    image[shape[0] // 2:] = 255
    return image


def _quiet():
    """The converter lists every captured variable on stdout and MLIR diagnostics on stderr: keep both out (a
    failure is raised with its reason, and the caller may fall back)."""
    return silenced((1, 2), replay=False)


def _litert():
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


def _tf_lite():
    import tensorflow as tf

    return tf.lite.Interpreter


#: who runs a ``.tflite``, preferred first: LiteRT (``ai-edge-litert``, the ``lite`` extra), then TensorFlow's own
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
        with warnings.catch_warnings(), _quiet():  # tf.lite announces its move to LiteRT, and XNNPACK itself
            warnings.simplefilter("ignore")
            return candidate, cls(model_content=content, num_threads=threads or os.cpu_count() or 1)


class Runner:
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
            with _quiet():
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


def agreement(expected: np.ndarray, got: np.ndarray) -> float:
    """Largest difference relative to the scale of the expected values (features have no fixed range); inf for NaN."""
    diff = float(np.max(np.abs(expected - got)) / max(1e-6, float(np.max(np.abs(expected)))))
    return diff if np.isfinite(diff) else float("inf")
