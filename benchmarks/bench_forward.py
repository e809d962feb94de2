"""A backbone's forward pass alone (random tensors, no decoding): TensorFlow graph vs XLA, two batch sizes.

The rate `transfer predict` can at best reach with TensorFlow on this machine;
compare with bench_predict's FLOP bound.

    python benchmarks/bench_forward.py --backbone mobilenetv2 --image-size 160
"""

from __future__ import annotations

import time

import numpy as np

from _common import parser


def rate(function, images, batch_size: int) -> float:
    function(images[:batch_size]).numpy()  # trace
    started = time.perf_counter()
    for i in range(0, len(images), batch_size):
        function(images[i:i + batch_size]).numpy()
    return len(images) / (time.perf_counter() - started)


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=512)
    args = p.parse_args()
    import tensorflow as tf

    from transfer import backbones
    from transfer.config import TrainConfig

    spec, config = backbones.resolve(TrainConfig(data_dir="x", backbone=args.backbone, weights="none",
                                                 image_size=args.image_size))
    model = spec.build((args.image_size,) * 2 + (3,), weights=None)
    images = np.random.default_rng(0).uniform(-1, 1, (args.images, args.image_size, args.image_size, 3))
    images = images.astype(np.float32)
    graph = tf.function(lambda x: model(x, training=False))
    xla = tf.function(lambda x: model(x, training=False), jit_compile=True)
    parts = [f"batch {b}: graph {rate(graph, images, b):.1f} img/s, XLA {rate(xla, images, b):.1f} img/s"
             for b in (args.batch_size, 4 * args.batch_size)]
    print(f"bench_forward {args.backbone} {args.image_size}px: " + " | ".join(parts))


if __name__ == "__main__":
    main()
