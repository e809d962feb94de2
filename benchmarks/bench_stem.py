"""smallvgg's first block on a CPU: a stride-2 convolution (as shipped) against convolving at full resolution
and then pooling (smallvgg before the fourth round of issue 5).

The preset's whole model (augmentation, mirroring, head) on one batch of random images, one
training step of each variant in turn; the fastest and the median step of each are printed with
their ratio (this machine runs some seconds at ~60 % speed: alternating steps see the same moments).

    python benchmarks/bench_stem.py --image-size 80 --steps 15
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np

from _common import parser


def pooled_stem(input_shape, weights=None, width=1.0, depth=None):
    """smallvgg as it was: every block a full-resolution conv-BN-ReLU followed by 2x2 max pooling."""
    import keras
    from keras import layers

    from transfer.convnets import _conv_bn_relu, _filters

    inputs = keras.Input(input_shape)
    x = inputs
    for i, f in enumerate(_filters([32, 64, 128, 256], depth, width)):
        x = layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(_conv_bn_relu(x, f, f"block{i + 1}"))
    return keras.Model(inputs, x, name="smallvgg")


def model(stem: str, size: int):
    from transfer.backbones import resolve
    from transfer.heads import build_model
    from transfer.presets import apply_preset
    from transfer.training import make_optimizer

    spec, config = resolve(apply_preset("small-data-scratch", {"data_dir": ".", "image_size": size}).validate())
    if stem == "pool":
        spec = dataclasses.replace(spec, build=pooled_stem)
    net = build_model(spec, config, 2)
    net.compile(optimizer=make_optimizer(config.optimizer, config.lr, config.weight_decay),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return net


def step_seconds(net, images, labels) -> float:
    started = time.perf_counter()
    net.train_on_batch(images, labels)
    return time.perf_counter() - started


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=15, help="timed training steps of each variant")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3)).astype(np.float32)
    labels = rng.integers(0, 2, args.batch_size)
    nets = {stem: model(stem, args.image_size) for stem in ("stride", "pool")}
    for net in nets.values():  # trace both before timing either
        for _ in range(3):
            net.train_on_batch(images, labels)
    times = {stem: [] for stem in nets}
    for _ in range(args.steps):  # alternating, so that both see the same moments of a noisy machine
        for stem, net in nets.items():
            times[stem].append(step_seconds(net, images, labels))
    fastest = {stem: min(t) for stem, t in times.items()}
    median = {stem: statistics.median(t) for stem, t in times.items()}
    print(f"bench_stem smallvgg depth 5 {args.image_size}px batch {args.batch_size}, {args.steps} alternating "
          f"training steps: stride-2 stem {fastest['stride'] * 1000:.0f} ms fastest, {median['stride'] * 1000:.0f} "
          f"ms median | conv+pool stem {fastest['pool'] * 1000:.0f} ms, {median['pool'] * 1000:.0f} ms | "
          f"stride-2 takes x{fastest['stride'] / fastest['pool']:.2f} (fastest), "
          f"x{median['stride'] / median['pool']:.2f} (median) of the time")


if __name__ == "__main__":
    main()
