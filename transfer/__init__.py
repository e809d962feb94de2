"""transfer: turn a folder of labeled images into a deployable image classifier.

The same names serve the CLI and a notebook::

    import transfer
    result = transfer.train(transfer.TrainConfig(data_dir="photos", backbone="resnet50"))
    transfer.predict(result.run_dir, ["new_photos/"]).predictions
    transfer.export(result.run_dir)
    transfer.evaluate(result.run_dir, "labeled_photos/").metrics["accuracy"]

Importing the package is cheap: each name below is imported when it is first
used, and TensorFlow only when a function that needs it runs. No module at
this level shares its name with a function (the reports live in ``reports/``,
prediction in ``prediction.py``), so importing one never hides a function.
The one exception is ``export``, a package whose entry points import nothing
until they run: they are bound here so that the function wins over the package.
"""

__version__ = "0.1.0"

from .config import TrainConfig  # noqa: E402
from .errors import TransferError  # noqa: E402
from .export import export, export_onnx, export_tflite  # noqa: E402

#: public name -> the module that defines it (None: the module itself)
_LAZY = {
    "train": "training",
    "TrainResult": "training",
    "predict": "prediction",
    "load_model": "runners",
    "load_run": "runs",
    "evaluate": "reports.evaluate",
    "explain": "reports.explain",
    "visualize": "reports.visualize",
    "doctor": "reports.doctor",
    "make_server": "serve",
    "backbones": None,
}


def __getattr__(name):
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'transfer' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)


__all__ = ["TrainConfig", "TransferError", "export", "export_onnx", "export_tflite", *_LAZY]
