"""Fine-tuning: `transfer train` with boundary caching (default) against the same run on images (--cache-features off).

All runs: --weights none --augment none, E frozen epochs then F fine-tuning
epochs from the registry's unfreeze point; each with an empty cache. With
caching, phase 1 trains the head on pooled features and phase 2 trains the
unfrozen top of the backbone on the activations cached at the unfreeze point.
A third run does the same with --cache-memory 1M, so that the cached
activations are spilled: streamed from the cache folder every epoch.

    python benchmarks/bench_finetune.py --train-per-class 200 --val-per-class 100 --epochs 2 --fine-tune-epochs 3
"""

from __future__ import annotations

import os
import tempfile

from _common import parser, subset, timed_cpu


def run(data: str, args, work: str, mode: str, cache_memory: str = "25%"):
    from transfer.config import TrainConfig
    from transfer.training import train

    config = TrainConfig(data_dir=data, backbone=args.backbone, weights="none", image_size=args.image_size,
                         epochs=args.epochs, fine_tune_epochs=args.fine_tune_epochs, augment="none",
                         batch_size=args.batch_size, output_dir=os.path.join(work, "models"),
                         name=mode if cache_memory == "25%" else f"{mode}-spilled",
                         cache_dir=os.path.join(work, f"cache-{mode}-{cache_memory}"), cache_features=mode,
                         cache_memory=cache_memory, restore_best=False,
                         patience=10 * (args.epochs + args.fine_tune_epochs), verbose=0)
    return timed_cpu(train, config)


def main():
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--fine-tune-epochs", type=int, default=3)
    p.add_argument("--train-per-class", type=int, default=200)
    p.add_argument("--val-per-class", type=int, default=100)
    args = p.parse_args()
    with subset(args.data, {"train": args.train_per_class, "validation": args.val_per_class}) as data, \
            tempfile.TemporaryDirectory(prefix="transfer-bench-work-") as work:
        plain, plain_s, plain_cpu = run(data, args, work, "off")
        cached, cached_s, cached_cpu = run(data, args, work, "auto")
        spilled, spilled_s, spilled_cpu = run(data, args, work, "auto", cache_memory="1M")
    print(f"bench_finetune {args.backbone} {args.image_size}px {args.epochs}+{args.fine_tune_epochs} epochs, "
          f"{2 * args.train_per_class}+{2 * args.val_per_class} images: on images {plain_s:.1f} s, "
          f"cpu {plain_cpu:.0f} s (val acc {plain.metrics['val']['accuracy']:.3f}) | cached features and "
          f"boundary {cached_s:.1f} s, cpu {cached_cpu:.0f} s (val acc {cached.metrics['val']['accuracy']:.3f}) "
          f"x{plain_s / cached_s:.1f} wall, x{plain_cpu / cached_cpu:.1f} cpu | spilled to disk {spilled_s:.1f} s, "
          f"cpu {spilled_cpu:.0f} s (val acc {spilled.metrics['val']['accuracy']:.3f}) x{plain_s / spilled_s:.1f} wall")


if __name__ == "__main__":
    main()
