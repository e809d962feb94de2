"""Train the from-scratch preset on cats vs dogs (train/ -> validation/) and print accuracy and wall time.

    python benchmarks/accuracy_scratch.py [--data ../shared/data/cats_vs_dogs] [--preset small-data-scratch]

One summary line on stdout; Keras progress on stderr. Record results in BENCHMARKS.md. The summary's
``curve`` is validation accuracy against training time: each validated epoch with the seconds since the
run started (``elapsed_seconds`` in the run's history.csv).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(ROOT, "..", "shared", "data", "cats_vs_dogs"))
    parser.add_argument("--preset", default="small-data-scratch")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's image size")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any other setting of the preset, e.g. --set augment=strong --set depth=4")
    parser.add_argument("--output", default=None, help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()

    import logging

    from transfer.presets import apply_preset
    from transfer.training import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {k: v for k, v in (("epochs", args.epochs), ("image_size", args.image_size)) if v is not None}
    overrides.update(_setting(item) for item in args.set)
    output = args.output or tempfile.mkdtemp(prefix="accuracy_scratch-")
    config = apply_preset(args.preset, {"data_dir": args.data, "output_dir": output, "name": "scratch",
                                        "overwrite": True, "verbose": 2, **overrides})
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Keras' progress lines; stdout is the summary
        result = train(config)
    seconds = time.perf_counter() - started
    history = [{"epoch": int(r["epoch"]) + 1, "seconds": round(r["elapsed_seconds"]),
                "val_accuracy": round(r["val_accuracy"], 4)} for r in result.history
               if r["val_accuracy"] == r["val_accuracy"]]  # not NaN: the epochs that --validation-freq validated
    print(json.dumps({"benchmark": "accuracy_scratch", "preset": args.preset, "overrides": overrides,
                      "backbone": result.config.backbone,
                      "image_size": result.config.image_size, "epochs": result.metrics["epochs"],
                      "val_accuracy": round(result.metrics["val"]["accuracy"], 4),
                      **({"val_accuracy_without_tta": round(_without_tta(result, args.data), 4)}
                         if result.config.tta else {}),
                      "wall_seconds": round(seconds, 1), "train_seconds": result.metrics["train_seconds"],
                      "machine": f"{platform.machine()}, {os.cpu_count()} cores", "curve": history}))


def _without_tta(result, data: str) -> float:
    """The same weights' accuracy on validation/ without test-time mirroring: what --tta adds."""
    import keras
    import numpy as np

    from transfer.features import extractor, head_top
    from transfer.data.images import load_image

    inputs = keras.Input(result.model.input_shape[1:])
    one_view = keras.layers.Reshape((1, -1))(extractor(result.model)(inputs))  # head_top takes (views, features)
    plain = keras.Model(inputs, head_top(result.model)(one_view))  # no tta_* layers, no mirror view
    size, correct, total = (result.config.image_size,) * 2, 0, 0
    for index, label in enumerate(result.labels):
        folder = os.path.join(data, "validation", label)
        images = np.stack([load_image(os.path.join(folder, name), size, result.config.resize)
                           for name in sorted(os.listdir(folder))]).astype("float32")
        correct += int((plain.predict(images, batch_size=64, verbose=0).argmax(1) == index).sum())
        total += len(images)
    return correct / total


def _setting(item: str) -> tuple[str, object]:
    """``key=value`` with the value read as JSON where it parses (numbers, true/false), else as a string."""
    key, _, value = item.partition("=")
    try:
        return key.replace("-", "_"), json.loads(value)
    except json.JSONDecodeError:
        return key.replace("-", "_"), value


if __name__ == "__main__":
    main()
