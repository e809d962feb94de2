"""transfer: turn a folder of labeled images into a deployable image classifier.

The same names serve the CLI and a notebook::

    import transfer
    result = transfer.train(transfer.TrainConfig(data_dir="photos", backbone="resnet50"))
    transfer.predict(result.run_dir, ["new_photos/"]).predictions
    transfer.export(result.run_dir)
    transfer.evaluate(result.run_dir, "labeled_photos/").metrics["accuracy"]

Importing the package is cheap: TensorFlow is imported only when a function
that needs it is first used. ``predict``, ``export``, ``evaluate``, ``explain``, ``visualize`` and ``doctor`` are imported here, not
lazily: they share their names with their modules, and the first import of
``transfer.predict`` (by ``export``, say) would otherwise rebind
``transfer.predict`` to the module.
"""

__version__ = "0.1.0"

from .config import TrainConfig  # noqa: E402
from .doctor import doctor  # noqa: E402
from .errors import TransferError  # noqa: E402
from .evaluation import evaluate  # noqa: E402
from .explain import explain  # noqa: E402
from .export import export, export_tflite  # noqa: E402
from .predict import load_model, predict  # noqa: E402
from .visualize import visualize  # noqa: E402

_LAZY = {
    "train": "training",
    "TrainResult": "training",
    "load_run": "runs",
    "export_onnx": "onnx_export",
    "make_server": "serve",
    "backbones": None,
}


def __getattr__(name):
    import importlib

    if name not in _LAZY:
        raise AttributeError(f"module 'transfer' has no attribute {name!r}")
    module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
    return module if _LAZY[name] is None else getattr(module, name)


__all__ = ["TrainConfig", "TransferError", "doctor", "evaluate", "explain", "export", "export_tflite", "load_model", "predict",
           "visualize", *_LAZY]
