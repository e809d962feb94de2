"""Input pipeline: decode + resize rate alone against the rate at which the model consumes images.

Decode: transfer's tf.data pipeline (Pillow decode and resize in parallel,
AUTOTUNE) over N photos, first pass, no cache. Consumption: the frozen
backbone's forward pass (preprocess -> backbone -> pooling) on in-memory
batches, which is what phase 1 feeds. Also timed: the second (in-memory cached)
pass over the same N images, a second `scan` (audit from its cache) of the whole
dataset, and reading the whole dataset's features back from the feature cache
(features computed at 32 px to keep the set-up short; pooled features have the
same size at any input size).

    python benchmarks/bench_pipeline.py --images 1000
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

from _common import parser, timed


def drain(ds) -> int:
    return sum(int(x.shape[0]) for x, _ in ds)


def consumption_rate(model, batch_size: int, size: int, repeats: int = 5) -> float:
    """Images/s of the frozen backbone's forward pass (best of ``repeats`` batches after a warm-up)."""
    from transfer.features import extractor

    frozen = extractor(model)
    batch = np.random.default_rng(0).uniform(0, 255, (batch_size, size, size, 3)).astype(np.float32)
    frozen.predict_on_batch(batch)
    return batch_size / min(timed(frozen.predict_on_batch, batch)[1] for _ in range(repeats))


def build(backbone: str, size: int):
    import keras

    from transfer import backbones
    from transfer.config import TrainConfig
    from transfer.heads import build_model

    spec, config = backbones.resolve(TrainConfig(data_dir="x", backbone=backbone, weights="none", image_size=size,
                                                 augment="none"))
    keras.utils.set_random_seed(0)
    return build_model(spec, config, 2), config


def feature_cache_read(dataset, examples, cache_dir: str, backbone: str) -> float:
    """Seconds to read every example's features back from the feature cache (after computing them once)."""
    import dataclasses

    from transfer.features import frozen_phase_cache

    model, config = build(backbone, 32)
    config = dataclasses.replace(config, cache_dir=cache_dir)
    digests = {c.path: c.digest for c in dataset.report.used}
    frozen_phase_cache(model, config, digests).features(examples)
    reader = frozen_phase_cache(model, config, digests)
    _, seconds = timed(reader.features, examples)
    assert reader.computed == 0
    return seconds


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000)
    args = p.parse_args()
    from transfer import data

    with tempfile.TemporaryDirectory(prefix="transfer-bench-") as cache_dir:
        _, cold_scan_s = timed(data.scan, args.data, cache_dir=cache_dir)
        dataset, warm_scan_s = timed(data.scan, args.data, cache_dir=cache_dir)
        everything = [e for examples in dataset.splits.values() for e in examples]
        examples = dataset.splits["train"][:args.images]
        pipeline = dict(image_size=args.image_size, batch_size=args.batch_size)
        n, decode_s = timed(drain, data.make_tf_dataset(examples, cache=False, **pipeline))
        cached = data.make_tf_dataset(examples, cache=True, **pipeline)
        drain(cached)
        _, second_pass_s = timed(drain, cached)
        model, _ = build(args.backbone, args.image_size)
        consume = consumption_rate(model, args.batch_size, args.image_size)
        read_s = feature_cache_read(dataset, everything, cache_dir, args.backbone)
    decode = n / decode_s
    print(f"bench_pipeline {args.backbone} {args.image_size}px batch {args.batch_size}: "
          f"decode+resize {decode:.0f} img/s "
          f"({n} images, {os.cpu_count()} cores) vs frozen backbone {consume:.1f} img/s: x{decode / consume:.1f} | "
          f"in-memory second pass {second_pass_s:.2f} s | scan of {len(everything)} images cold {cold_scan_s:.1f} s, "
          f"again {warm_scan_s:.2f} s | feature cache read of {len(everything)} images {read_s:.2f} s")


if __name__ == "__main__":
    main()
