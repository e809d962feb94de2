"""Batch norm on a CPU: smallvgg's training step with Keras' BatchNormalization, the fused kernel, and none.

Random images, in-memory arrays, training step only (no decoding): what the
from-scratch preset's net costs per image, and how much of it is batch norm.

    python benchmarks/bench_batchnorm.py --image-size 96 --depth 5
"""

from __future__ import annotations

import time

import numpy as np

from _common import parser


def smallvgg(size: int, depth: int, norm: str):
    import keras
    from keras import layers

    from transfer.layers import FusedBatchNormalization

    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    for f in [32, 64, 128, 256, 512, 1024][:depth]:
        x = layers.Conv2D(f, 3, padding="same", use_bias=norm == "none")(x)
        if norm != "none":
            x = (FusedBatchNormalization if norm == "fused" else layers.BatchNormalization)(momentum=0.9)(x)
        x = layers.MaxPooling2D(2)(layers.ReLU()(x))
    outputs = layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def rate(model, images, labels, batch_size: int) -> float:
    model.fit(images[:2 * batch_size], labels[:2 * batch_size], batch_size=batch_size, verbose=0)  # trace
    started = time.perf_counter()
    model.fit(images, labels, batch_size=batch_size, verbose=0)
    return len(images) / (time.perf_counter() - started)


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--images", type=int, default=640)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.image_size, args.image_size, 3)).astype(np.float32)
    labels = rng.integers(0, 2, args.images)
    rates = {norm: rate(smallvgg(args.image_size, args.depth, norm), images, labels, args.batch_size)
             for norm in ("keras", "fused", "none")}
    print(f"bench_batchnorm smallvgg depth {args.depth} {args.image_size}px batch {args.batch_size}: training "
          f"Keras BatchNormalization {rates['keras']:.1f} img/s | FusedBatchNormalization {rates['fused']:.1f} img/s "
          f"x{rates['fused'] / rates['keras']:.2f} | no batch norm {rates['none']:.1f} img/s")


if __name__ == "__main__":
    main()
