"""TensorFlow Lite: run a frozen Keras model through the TFLite interpreter and XNNPACK.

On a CPU, TensorFlow's own kernels for depthwise convolutions (EfficientNet,
MobileNet) are slow; XNNPACK, which the TFLite interpreter uses by default, runs
the same float32 network several times faster (BENCHMARKS.md). Feature caching
uses it for the frozen part of a backbone, and only after checking on the real
images that it computes what Keras computes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import numpy as np

log = logging.getLogger("transfer")


def convert(model) -> bytes:
    """A float32 ``.tflite`` flatbuffer of a Keras model with one image input (any batch size)."""
    import tensorflow as tf

    # from_keras_model, not from_concrete_functions: the latter froze garbage for set_weights()'d variables here
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with _quiet():
        return converter.convert()


@contextlib.contextmanager
def _quiet():
    """The converter lists every captured variable on stdout and MLIR diagnostics on stderr: keep both out."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


class Runner:
    """Batches through a TFLite interpreter using every core; resizes the input only when the batch size changes."""

    STEP = 8

    def __init__(self, content: bytes, threads: int | None = None):
        import tensorflow as tf

        with warnings.catch_warnings(), _quiet():  # it announces its move to ai_edge_litert, and XNNPACK itself
            warnings.simplefilter("ignore")
            self.interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads or os.cpu_count() or 1)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = None

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Small slices: XNNPACK ran 8-image batches about 1.3 times as fast as 32-image ones (BENCHMARKS.md)."""
        return np.concatenate([self._invoke(images[i:i + self.STEP]) for i in range(0, len(images), self.STEP)])

    def _invoke(self, images: np.ndarray) -> np.ndarray:
        if images.shape[0] != self.batch:
            self.interpreter.resize_tensor_input(self.input, list(images.shape))
            with _quiet():
                self.interpreter.allocate_tensors()
            self.batch = images.shape[0]
        self.interpreter.set_tensor(self.input, np.ascontiguousarray(images, dtype=np.float32))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output).copy()


def agreement(expected: np.ndarray, got: np.ndarray) -> float:
    """Largest difference relative to the scale of the expected values (features have no fixed range); inf for NaN."""
    diff = float(np.max(np.abs(expected - got)) / max(1e-6, float(np.max(np.abs(expected)))))
    return diff if np.isfinite(diff) else float("inf")
