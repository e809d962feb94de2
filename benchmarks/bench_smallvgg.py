"""smallvgg's shape on a CPU: the net as shipped against the variants it replaced, one training step each.

- ``shipped``: a stride-2 first block, then conv-BN-ReLU + pooling blocks, extra blocks of 256 filters;
- ``pool-stem``: the first block convolves at full resolution and then pools (before round 4 of issue 5);
- ``fifth-512``: extra blocks double the filters, so the fifth has 512 (before round 5).

The preset's whole model (augmentation, mirroring, head) on one batch of random images, one
training step of each variant in turn; the fastest and the median step of each are printed with
their ratio to ``shipped`` (this machine runs some seconds at ~60 % speed: alternating steps see the
same moments). With ``--fit-epochs N``, whole epochs instead: ``fit`` on 2000 random images (one
epoch of cats vs dogs' train/), each variant in turn, N times, with every epoch's seconds printed
(this is what showed the fifth block of 512 filters running some epochs at half speed).

    python benchmarks/bench_smallvgg.py --image-size 80 --steps 15
    python benchmarks/bench_smallvgg.py --image-size 80 --fit-epochs 6
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import numpy as np

from _common import parser


def variant(stride_stem: bool, most: int | None):
    """A smallvgg builder with the chosen first block and cap on the filters of extra blocks."""

    def build(input_shape, weights=None, width=1.0, depth=None):
        import keras
        from keras import layers

        from transfer.backbones.scratch import _conv_bn_relu, _filters

        inputs = keras.Input(input_shape)
        x = inputs
        for i, f in enumerate(_filters([32, 64, 128, 256], depth, width, most=most)):
            strided = stride_stem and i == 0
            x = _conv_bn_relu(x, f, f"block{i + 1}", strides=2 if strided else 1)
            x = x if strided else layers.MaxPooling2D(2, name=f"block{i + 1}_pool")(x)
        return keras.Model(inputs, x, name="smallvgg")

    return build


VARIANTS = {"shipped": None, "pool-stem": variant(False, 256), "fifth-512": variant(True, None)}


def model(name: str, size: int):
    from transfer.backbones import resolve
    from transfer.heads import build_model
    from transfer.presets import apply_preset
    from transfer.training import make_optimizer

    spec, config = resolve(apply_preset("small-data-scratch", {"data_dir": ".", "image_size": size}).validate())
    if VARIANTS[name] is not None:
        spec = dataclasses.replace(spec, build=VARIANTS[name])
    net = build_model(spec, config, 2)
    net.compile(optimizer=make_optimizer(config.optimizer, config.lr, config.weight_decay),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return net


def step_seconds(net, images, labels) -> float:
    started = time.perf_counter()
    net.train_on_batch(images, labels)
    return time.perf_counter() - started


def fit_epochs(nets, args) -> None:
    """Whole epochs of ``fit``, the variants in turn: the seconds of each, one line per variant."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2000, args.image_size, args.image_size, 3)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, rng.integers(0, 2, 2000))).batch(args.batch_size)
    dataset = dataset.prefetch(2)
    for net in nets.values():  # trace all before timing any
        net.fit(dataset.take(3), epochs=1, verbose=0)
    seconds = {name: [] for name in nets}
    for _ in range(args.fit_epochs):
        for name, net in nets.items():
            started = time.perf_counter()
            net.fit(dataset, epochs=1, verbose=0)
            seconds[name].append(time.perf_counter() - started)
    for name, times in seconds.items():
        print(f"bench_smallvgg depth 5 {args.image_size}px batch {args.batch_size}, epochs of 2000 images in turn: "
              f"{name} " + " ".join(f"{t:.1f}" for t in times) + f" s (median {statistics.median(times):.1f} s)")


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=15, help="timed training steps of each variant")
    p.add_argument("--fit-epochs", type=int, default=0, help="time whole epochs of fit instead, N per variant")
    args = p.parse_args()
    nets = {name: model(name, args.image_size) for name in VARIANTS}
    if args.fit_epochs:
        return fit_epochs(nets, args)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size, args.image_size, args.image_size, 3)).astype(np.float32)
    labels = rng.integers(0, 2, args.batch_size)
    for net in nets.values():  # trace all before timing any
        for _ in range(3):
            net.train_on_batch(images, labels)
    times = {name: [] for name in nets}
    for _ in range(args.steps):  # alternating, so that all see the same moments of a noisy machine
        for name, net in nets.items():
            times[name].append(step_seconds(net, images, labels))
    fastest = {name: min(t) for name, t in times.items()}
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"bench_smallvgg depth 5 {args.image_size}px batch {args.batch_size}, {args.steps} alternating training "
          "steps (fastest, median; ratio to shipped): " + " | ".join(
              f"{name} {fastest[name] * 1000:.0f} ms, {median[name] * 1000:.0f} ms "
              f"(x{fastest[name] / fastest['shipped']:.2f}, x{median[name] / median['shipped']:.2f})"
              for name in nets))


if __name__ == "__main__":
    main()
