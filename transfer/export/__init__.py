"""Deployment formats, each checked against the Keras model it came from before it is kept.

One file per format, each with an ``export(model_path, output=None, name=None,
data=None, unsafe=False, **options)`` that writes ``OUTPUT/NAME/...`` and
returns a result with ``to_dict()``:

- ``saved_model`` (:mod:`.savedmodel`): TensorFlow Serving's ``DIR/<name>/<version>/``;
- ``tflite`` (:mod:`.tflite`): ``DIR/<name>/tflite-<quantize>/``, float32 or quantized;
- ``onnx`` (:mod:`.onnx`): ``DIR/<name>/onnx/``, run by onnxruntime.

Where an export goes and how it is written is :mod:`.folders`; the check on
real photos is :mod:`.verify`. A new format is one file here and one line in
``FORMATS``. This module imports no format (nor TensorFlow, nor NumPy) until
one is used, so the command line can list them for ``--help``.

``transfer.export`` is the function (``transfer/__init__.py`` binds it over the
package), so import the modules as ``from transfer.export import tflite``, not
``import transfer.export.tflite as tflite``.
"""

from __future__ import annotations

import importlib

#: --format: the module of each format (its ``export`` function writes it)
FORMATS = {"saved_model": "savedmodel", "tflite": "tflite", "onnx": "onnx"}
#: tflite's --quantize: what each stores. int8 takes uint8 pixels (0-255, as a camera gives them) and returns float32
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")


def export_as(fmt: str, model_path: str, **options):
    """Export ``model_path`` in format ``fmt`` (a key of ``FORMATS``), with that format's ``options``."""
    return importlib.import_module(f".{FORMATS[fmt]}", __name__).export(model_path, **options)


def export(model_path: str, output: str | None = None, name: str | None = None,
           version: int | None = None, data: str | None = None, unsafe: bool = False):
    """Export a run folder (or ``.keras`` file) as a SavedModel for TensorFlow Serving, checked on real photos.

    The check runs on the run's validation photos (split.csv), or on the images under ``data``.
    ``unsafe``: load a ``.keras`` file outside Keras' safe mode (see :func:`transfer.load_model`).
    """
    return export_as("saved_model", model_path, output=output, name=name, version=version, data=data, unsafe=unsafe)


def export_tflite(model_path: str, output: str | None = None, name: str | None = None, quantize: str = "none",
                  data: str | None = None, unsafe: bool = False):
    """Export a run folder (or ``.keras`` file) as TensorFlow Lite, checked on real photos before it is kept.

    int8 calibrates on the run's training photos (split.csv), or on the images under ``data``.
    """
    return export_as("tflite", model_path, output=output, name=name, quantize=quantize, data=data, unsafe=unsafe)


def export_onnx(model_path: str, output: str | None = None, name: str | None = None, data: str | None = None,
                unsafe: bool = False):
    """Export a run folder (or ``.keras`` file) as ONNX, checked with onnxruntime on real photos before it is kept.

    ``data``: a folder of images to check on when the model has no run folder (and so no validation split).
    """
    return export_as("onnx", model_path, output=output, name=name, data=data, unsafe=unsafe)
