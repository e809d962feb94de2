"""LiteRT (``ai-edge-litert``) against TensorFlow's deprecated ``tf.lite.Interpreter`` on the same ``.tflite`` files.

Three flatbuffers of one model, made as ``transfer`` makes them: the frozen
feature extractor the TFLite feature engine runs (float32), and the whole
classifier as ``transfer export --format tflite`` writes it, float32 and int8
(calibrated on the photos). The classifier's head is untrained: the timing does
not depend on its weights. Both interpreters run the same photos through
``transfer.runners.TFLiteRunner`` (same slicing, same thread count), alternating
which goes first in each repeat; the median ms/image of each and the ratio
LiteRT / tf.lite are printed (below 1: LiteRT is faster), with the largest
relative difference of their outputs and whether the classifiers' top-1 agree. The CPU time of the
process (all threads) per image is printed too: on a shared machine it is less disturbed than wall time.

    python benchmarks/bench_litert.py --backbone efficientnet_lite0 --images 64 --repeats 7
"""

from __future__ import annotations

import os
import statistics

import numpy as np

from _common import image_paths, parser, timed_cpu


def flatbuffers(backbone: str, size: int | None, photos: np.ndarray) -> dict[str, bytes]:
    """name -> .tflite content: the feature extractor and the classifier, float32 and int8."""
    from transfer import backbones, features
    from transfer.export import tflite
    from transfer.config import TrainConfig
    from transfer.heads import build_model

    spec, config = backbones.resolve(TrainConfig(data_dir="x", backbone=backbone, image_size=size))
    model = build_model(spec, config, num_classes=2)
    return {
        f"{spec.name} features float32": tflite.convert(features.extractor(model)),
        f"{spec.name} classifier float32": tflite.convert(model),
        f"{spec.name} classifier int8": tflite.convert(model, "int8", photos[:32]),
    }


def load(paths: list[str], size: int) -> np.ndarray:
    """The photos as float32 pixels 0-255, resized to the model's input."""
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size)), np.float32) for p in paths])


def compare(content: bytes, images: np.ndarray, threads: int, repeats: int) -> dict:
    """Median ms/image of each interpreter, alternating which runs first, and how far their outputs differ."""
    from transfer import runners
    from transfer.export import tflite

    runners = {name: runners.TFLiteRunner(content, threads, name) for name in runners.INTERPRETERS}
    outputs = {name: run(images) for name, run in runners.items()}  # warm-up and the outputs compared
    times = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    order = list(runners)
    for _ in range(repeats):
        for name in order:
            _, seconds, cpu_seconds = timed_cpu(runners[name], images)
            times[name].append(seconds * 1000 / len(images))
            cpu[name].append(cpu_seconds * 1000 / len(images))
        order.reverse()
    litert, tf_lite = outputs["litert"], outputs["tf.lite"]
    return {
        "ms": {name: statistics.median(t) for name, t in times.items()},
        "cpu": {name: statistics.median(t) for name, t in cpu.items()},
        "diff": tflite.agreement(tf_lite, litert),
        "top1": float(np.mean(litert.argmax(-1) == tf_lite.argmax(-1))),
    }


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.set_defaults(backbone="efficientnet_lite0", image_size=None)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    import ai_edge_litert  # noqa: F401  the comparison needs both: fail here, before any work, if missing

    from transfer import backbones
    from transfer.config import TrainConfig

    size = args.image_size or backbones.resolve(TrainConfig(data_dir="x", backbone=args.backbone))[1].image_size
    photos = load(image_paths(args.data, "validation", args.images), size)
    for name, content in flatbuffers(args.backbone, size, photos).items():
        result = compare(content, photos, args.threads, args.repeats)
        ms, cpu = result["ms"], result["cpu"]
        top1 = f", top-1 agree {result['top1']:.3f}" if "classifier" in name else ""
        print(f"bench_litert {name} {size}px, {len(photos)} images, {args.threads} threads, "
              f"median of {args.repeats}: tf.lite {ms['tf.lite']:.2f} ms/image, LiteRT {ms['litert']:.2f} ms/image, "
              f"ratio LiteRT/tf.lite {ms['litert'] / ms['tf.lite']:.3f} (CPU time: "
              f"{cpu['tf.lite']:.2f} vs {cpu['litert']:.2f} ms/image, ratio {cpu['litert'] / cpu['tf.lite']:.3f}); "
              f"outputs differ by {result['diff']:.2g} (relative){top1}", flush=True)


if __name__ == "__main__":
    main()
