"""ONNX: convert a Keras model with tf2onnx and run it with onnxruntime (``pip install 'transfer[onnx]'``).

``transfer export RUN --format onnx`` writes ``DIR/<name>/onnx/`` with
``model.onnx``, ``labels.txt`` and ``metadata.json``. The graph takes ``image``
(float32 RGB pixels 0-255, ``[batch, height, width, 3]``; preprocessing is
inside, as in every export) and returns ``probabilities``. It is converted from
a ``tf.function`` that calls the model with ``training=False``: traced without
it, Keras keeps the random augmentation ops, which ONNX does not have. The file
is kept only if onnxruntime agrees with Keras on the run's validation photos
(``THRESHOLDS["none"]``); a model with a TensorFlow op that tf2onnx cannot
translate is refused by name, and nothing is written.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass

from .. import runs
from ..errors import RunError, first_line
from ..runners import ONNXRunner, quiet, require
from .folders import check_arguments, destination, provenance, write_folder
from .verify import VERIFY_IMAGES, check_images, readable, verified_line, verify_onnx

log = logging.getLogger("transfer")

INPUT = "image"
OUTPUT = "probabilities"
OPSET = 17  # read by onnx >= 1.12 and onnxruntime >= 1.13


@dataclass
class ONNXResult:
    path: str  # the .onnx file
    labels: list[str]
    images: int  # validation images the .onnx and the Keras model were compared on
    top1_agreement: float
    max_abs_diff: float
    size: int  # bytes of the .onnx
    checked_on: str = ""  # where the images came from: the run's validation images, or --data

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def summary(self) -> str:
        return verified_line(self, "onnx")


def export(model_path: str, output: str | None = None, name: str | None = None, data: str | None = None,
           unsafe: bool = False) -> ONNXResult:
    """Export a run folder (or ``.keras`` file) as ONNX, checked with onnxruntime on real photos before it is kept.

    ``data``: a folder of images to check on when the model has no run folder (and so no validation split).
    """
    output, name, data = check_arguments(output, name, None, data)
    for module in ("tf2onnx", "onnx", "onnxruntime"):
        require(module)
    loaded, source, base = destination(model_path, output, name, data, unsafe)
    target = os.path.join(base, runs.ONNX_FOLDER)
    if os.path.lexists(target):
        raise RunError(f"{target!r} already exists; delete it to export again, or choose another --name.")
    run = runs.load_run(source) if runs.is_run_folder(source) else None
    checked_on, candidates = check_images(run, data)
    checks = readable(loaded, candidates, VERIFY_IMAGES, "validation")[1]
    what = repr(loaded.source)
    if run is not None:
        what = f"{run.path!r} (backbone {run.record.get('config', {}).get('backbone', '?')})"
    log.info("converting to ONNX (opset %d)", OPSET)
    content = convert(loaded.keras_model, what)
    top1, diff = verify_onnx(loaded, ONNXRunner(content, what), checks)
    result = ONNXResult(os.path.join(target, runs.ONNX_FILE), loaded.labels, len(checks), top1, diff, len(content),
                        checked_on)
    write_folder(base, target, content, _metadata(loaded, run, result), runs.ONNX_FILE)
    return result


def convert(model, what: str = "the model") -> bytes:
    """The ONNX bytes of a Keras image classifier with any batch size; :class:`RunError` naming the ops it lacks."""
    import tensorflow as tf

    tf2onnx = require("tf2onnx")
    _, height, width, _ = model.input_shape
    signature = [tf.TensorSpec((None, height, width, 3), tf.float32, name=INPUT)]
    function = tf.function(lambda image: model(image, training=False), input_signature=signature)
    try:
        with quiet():  # tf2onnx logs every op it cannot convert, and TensorFlow its graph rewrites
            proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=OPSET)
    except Exception as error:
        raise RunError(f"{what} cannot be converted to ONNX by tf2onnx {tf2onnx.__version__}: {first_line(error)}; "
                       "nothing was written. Use --format saved_model or tflite.") from None
    _inline_captured_constants(function.get_concrete_function().graph, proto)
    missing = unsupported_ops(proto)
    if missing:
        raise RunError(f"{what} cannot be converted to ONNX: tf2onnx {tf2onnx.__version__} (opset {OPSET}) has no "
                       f"ONNX equivalent of the TensorFlow op(s) {', '.join(missing)}; nothing was written. "
                       "Use --format saved_model or tflite.")
    extra = [i.name for i in proto.graph.input if i.name != INPUT]
    if extra:
        raise RunError(f"{what} cannot be converted to ONNX: tf2onnx {tf2onnx.__version__} left tensors of the model "
                       f"as inputs beside the image ({', '.join(extra[:3])}); nothing was written. "
                       "Use --format saved_model or tflite.")
    _rename_output(proto, OUTPUT)
    return proto.SerializeToString()


def unsupported_ops(proto) -> list[str]:
    """TensorFlow ops that tf2onnx copied into the graph as they were, for want of an ONNX translation."""
    import onnx

    return sorted({node.op_type for node in proto.graph.node
                   if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)})


def _inline_captured_constants(graph, proto) -> None:
    """Tensors a layer computed once and keeps (Keras' Normalization: its mean and variance, as in EfficientNetB0)
    are captured by the traced function, and tf2onnx makes them graph inputs: give them their values instead."""
    from onnx import numpy_helper

    values = {inner.name: outer.numpy() for outer, inner in zip(graph.external_captures, graph.internal_captures)
              if hasattr(outer, "numpy") and outer.dtype.name != "resource"}
    inputs = list(proto.graph.input)
    del proto.graph.input[:]
    for tensor in inputs:
        if tensor.name in values:
            proto.graph.initializer.append(numpy_helper.from_array(values[tensor.name], tensor.name))
        else:
            proto.graph.input.append(tensor)


def _rename_output(proto, name: str) -> None:
    """tf2onnx names the output after a TensorFlow tensor ("Identity:0"); clients look for ``probabilities``."""
    old = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = [name if out == old else out for out in node.output]
    proto.graph.output[0].name = name


def _metadata(loaded, run, result: ONNXResult) -> dict:
    """What a deployer needs beside the .onnx: labels, input and output names, and where it came from."""
    metadata = {"format": "onnx", **provenance(loaded, run), "opset": OPSET,
                "input": {"name": INPUT, "dtype": "float32", "pixels": "RGB 0-255, shape [batch, height, width, 3]"},
                "output": {"name": OUTPUT, "dtype": "float32", "values": "probabilities, one per label"},
                "verification": {k: v for k, v in result.to_dict().items() if k not in ("path", "labels")}}
    metadata["versions"].update({m: importlib.import_module(m).__version__ for m in ("tf2onnx", "onnx", "onnxruntime")})
    return metadata
