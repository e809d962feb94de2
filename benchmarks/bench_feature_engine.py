"""When converting the frozen backbone to TFLite pays: seconds to convert Lite0's feature extractor, against the
milliseconds per image TFLite saves over Keras. Their ratio is the break-even number of backbone passes, which
is what ``features.TFLITE_MIN_PASSES`` (``--feature-engine auto``) is set from.

    python benchmarks/bench_feature_engine.py --sizes 96 224
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from transfer import backbones, features
from transfer.config import TrainConfig
from transfer.export import tflite
from transfer.heads import build_model
from transfer.runners import TFLiteRunner


def seconds_per_image(call, images: np.ndarray, repeats: int = 5) -> float:
    started = time.monotonic()
    for _ in range(repeats):
        call(images)
    return (time.monotonic() - started) / (repeats * len(images))


def measure(size: int, batch: int) -> str:
    spec, config = backbones.resolve(TrainConfig(data_dir="x", backbone="efficientnet_lite0", image_size=size))
    extractor = features.extractor(build_model(spec, config, num_classes=2))
    images = np.random.default_rng(0).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    extractor.predict_on_batch(images)  # traced before the clock starts
    started = time.monotonic()
    runner = TFLiteRunner(tflite.convert(extractor))
    convert = time.monotonic() - started
    runner(images)
    keras_s, tflite_s = seconds_per_image(extractor.predict_on_batch, images), seconds_per_image(runner, images)
    saved = keras_s - tflite_s
    even = f"{convert / saved:.0f}" if saved > 0 else "never"
    return (f"size {size}: convert {convert:.1f} s, keras {keras_s * 1e3:.2f} ms/img, tflite {tflite_s * 1e3:.2f} "
            f"ms/img, break-even {even} passes, load {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 224])
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    for size in args.sizes:
        print(measure(size, args.batch), flush=True)


if __name__ == "__main__":
    main()
