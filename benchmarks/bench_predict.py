"""Prediction: `transfer predict` against a naive loop and against the FLOP bound of this machine.

Naive loop: for each image, Pillow open, convert, resize, model.predict on a
batch of one (what a first script does). FLOP bound: the model's FLOPs per
image (2 x multiply-adds of every kernel, counted from the layers) divided into
the GFLOP/s of a large float32 matmul measured here; no convnet reaches it,
depthwise convolutions (MobileNetV2) least of all. The model has random
weights: the timing does not depend on them. ``--tflite`` adds the same model
exported as float32 and int8 ``.tflite`` (int8 calibrated on 100 of the photos),
predicted by `transfer predict` through XNNPACK; ``--onnx`` its ONNX export through onnxruntime;
``--saved-model`` its SavedModel export (``transfer export``), predicted through the pixels signature.

    python benchmarks/bench_predict.py --images 1000 --naive-images 200
    python benchmarks/bench_predict.py --backbone efficientnet_lite0 --image-size 224 --tflite --onnx --saved-model
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np

from _common import image_paths, parser, timed


def model_flops(model) -> float:
    """FLOPs of one forward pass: 2 x kernel size x output positions, for every layer with a kernel."""
    total = 0.0
    for layer in _all_layers(model):
        kernels = [getattr(layer, name, None) for name in ("kernel", "depthwise_kernel", "pointwise_kernel")]
        sizes = [math.prod(k.shape) for k in kernels if k is not None]
        if sizes:
            total += 2.0 * sum(sizes) * math.prod(layer.output.shape[1:-1])
    return total


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best of ``repeats`` float32 n x n matmuls, in GFLOP/s."""
    import tensorflow as tf

    a = tf.random.normal((n, n))
    b = tf.random.normal((n, n))
    tf.linalg.matmul(a, b).numpy()  # warm up
    best = min(timed(lambda: tf.linalg.matmul(a, b).numpy())[1] for _ in range(repeats))
    return 2.0 * n ** 3 / best / 1e9


def naive_loop(model, paths, size):
    from PIL import Image

    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((size, size)), dtype=np.float32)
        model.predict(pixels[None], verbose=0)


def saved_model(args, work: str) -> str:
    """A model built like a run's (random weights), saved as a .keras file."""
    import keras

    from transfer import backbones
    from transfer.config import TrainConfig
    from transfer.heads import build_model

    spec, config = backbones.resolve(TrainConfig(data_dir="x", backbone=args.backbone, weights="none",
                                                 image_size=args.image_size, augment="none"))
    keras.utils.set_random_seed(0)
    path = os.path.join(work, "model.keras")
    build_model(spec, config, 2).save(path)
    return path


def tflite_rates(keras_path: str, paths: list[str], args, work: str) -> str:
    """img/s of `transfer predict` on the float32 and int8 .tflite of the model, as a summary fragment."""
    import keras

    from transfer import layers  # noqa: F401  (the model file's custom layers)
    from transfer.export import tflite
    from transfer.data.images import load_image

    model = keras.saving.load_model(keras_path)
    calibration = np.stack([load_image(p, (args.image_size, args.image_size)) for p in paths[:100]])
    rates = []
    for quantize in ("none", "int8"):
        path = os.path.join(work, f"model-{quantize}.tflite")
        with open(path, "wb") as f:
            f.write(tflite.convert(model, quantize, calibration))
        rates.append(f"TFLite {quantize if quantize == 'int8' else 'float32'} {_rate(path, paths, args)}")
    return " | ".join(rates)


def onnx_rate(keras_path: str, paths: list[str], args, work: str) -> str:
    """img/s of `transfer predict` on the model's ONNX export (onnxruntime), as a summary fragment."""
    import keras

    from transfer import layers  # noqa: F401  (the model file's custom layers)
    from transfer.export import onnx

    path = os.path.join(work, "model.onnx")
    with open(path, "wb") as f:
        f.write(onnx.convert(keras.saving.load_model(keras_path)))
    return f"ONNX (onnxruntime) {_rate(path, paths, args)}"


def saved_model_rate(keras_path: str, paths: list[str], args, work: str) -> str:
    """img/s of `transfer predict` on the model's SavedModel export, as a summary fragment."""
    from transfer.export import export

    result = export(keras_path, output=os.path.join(work, "export"), name="bench",
                    data=os.path.dirname(os.path.dirname(paths[0])))
    return f"SavedModel {_rate(result.path, paths, args)}"


def _rate(path: str, paths: list[str], args) -> str:
    """`transfer predict` on an exported file: img/s after a warm-up batch, and the file's size."""
    from transfer.prediction import load_model, predict

    loaded = load_model(path)
    predict(loaded, paths[:args.batch_size], batch_size=args.batch_size)  # warm up
    _, seconds = timed(predict, loaded, paths, batch_size=args.batch_size)
    size = os.path.getsize(path) if os.path.isfile(path) else sum(
        os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)
    return f"{len(paths) / seconds:.1f} img/s ({size / 2**20:.1f} MiB)"


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--naive-images", type=int, default=200, help="the naive loop runs on the first N (it is slow)")
    p.add_argument("--tflite", action="store_true", help="also time the float32 and int8 .tflite of the model")
    p.add_argument("--onnx", action="store_true", help="also time the model's ONNX export (onnxruntime)")
    p.add_argument("--saved-model", action="store_true", help="also time the model's SavedModel export")
    args = p.parse_args()
    from transfer.prediction import load_model, predict

    paths = image_paths(args.data, "train", args.images)
    peak = matmul_gflops()  # measured before and after: the better of the two is the bound (the machine is shared)
    with tempfile.TemporaryDirectory(prefix="transfer-bench-") as work:
        keras_path = saved_model(args, work)
        loaded = load_model(keras_path)
        predict(loaded, paths[:args.batch_size], batch_size=args.batch_size)  # warm up (tracing)
        result, seconds = timed(predict, loaded, paths, batch_size=args.batch_size)
        lite = " | ".join(rates(keras_path, paths, args, work) for rates, wanted in
                          ((saved_model_rate, args.saved_model), (tflite_rates, args.tflite),
                                                   (onnx_rate, args.onnx)) if wanted)
        naive_loop(loaded.keras_model, paths[:2], args.image_size)
        _, naive_s = timed(naive_loop, loaded.keras_model, paths[:args.naive_images], args.image_size)
    assert len(result.predictions) == len(paths), result.failures
    flops = model_flops(loaded.keras_model)
    gflops = max(peak, matmul_gflops())
    ours, naive, bound = len(paths) / seconds, args.naive_images / naive_s, gflops * 1e9 / flops
    print(f"bench_predict {args.backbone} {args.image_size}px batch {args.batch_size}: transfer predict "
          f"{len(paths)} images {ours:.1f} img/s | naive loop ({args.naive_images} images) {naive:.1f} img/s "
          f"x{ours / naive:.1f} "
          f"| FLOP bound {bound:.1f} img/s ({flops / 1e9:.3f} GFLOP/image at {gflops:.0f} GFLOP/s matmul): "
          f"{ours / bound:.0%} of it" + (f"\nbench_predict same model, same images: Keras {ours:.1f} img/s | {lite}"
                                         if lite else ""))


if __name__ == "__main__":
    main()
