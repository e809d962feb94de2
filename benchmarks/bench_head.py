"""Phase 1 on cached features: Keras' ``fit`` (today's default, 10 epochs) against the compiled epochs of
``--head-fit fast`` (the defaults there: at most 200 epochs, patience 20), on the same features of real photographs.

Each data set is trained twice by ``transfer.train`` with one cache folder:
first ``--head-fit keras --epochs 10`` (which computes the features), then
``--head-fit fast`` with the default maximum of epochs. The time of an epoch
is read from history.csv (the seconds between the first and the last epoch's
rows, over the epochs between them: validation, history and backups
included, the feature computation not); accuracy is the run's on val/.
Prints one line per set and run, then the ratio of the epoch times.

    python benchmarks/bench_head.py ../shared/data/blood_cells_pbc ../shared/data/monkey_species \\
        ../shared/data/cats_vs_dogs
"""

from __future__ import annotations

import csv
import os
import tempfile

from _common import timed

RUNS = {"keras": {"head_fit": "keras", "epochs": 10}, "fast": {"head_fit": "fast"}}


def train(data: str, work: str, name: str, options: dict, args):
    from transfer.config import TrainConfig
    from transfer.training import train as run

    config = TrainConfig(data_dir=data, backbone=args.backbone, fine_tune_epochs=0, output_dir=os.path.join(work, "m"),
                         name=name, cache_dir=args.cache_dir or os.path.join(work, "cache"), verbose=0, **options)
    result, seconds = timed(run, config)
    return result, seconds


def epoch_seconds(run_dir: str) -> tuple[int, float]:
    """(epochs, seconds per epoch after the first) from history.csv's elapsed_seconds."""
    with open(os.path.join(run_dir, "history.csv"), newline="") as f:
        elapsed = [float(row["elapsed_seconds"]) for row in csv.DictReader(f)]
    return len(elapsed), (elapsed[-1] - elapsed[0]) / max(1, len(elapsed) - 1)


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="+", help="data sets with train/ and val/ (or validation/) folders")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--cache-dir", default=None, help="feature cache to share between runs [default: a temporary one]")
    args = p.parse_args()
    print(f"{'set':<18}{'run':<7}{'epochs':>7}{'s/epoch':>10}{'head s':>8}{'val acc':>9}{'val loss':>9}{'run s':>8}")
    with tempfile.TemporaryDirectory() as work:
        for data in args.data:
            name, per_epoch = os.path.basename(os.path.normpath(data)), {}
            for run, options in RUNS.items():
                result, seconds = train(data, work, f"{name}-{run}", options, args)
                epochs, per_epoch[run] = epoch_seconds(result.run_dir)
                times = result.metrics["seconds"]
                head = times["head"] - sum(times.get("features", []))
                print(f"{name:<18}{run:<7}{epochs:>7}{per_epoch[run]:>10.4f}{head:>8.1f}"
                      f"{result.metrics['val']['accuracy']:>9.4f}{result.metrics['val']['loss']:>9.4f}{seconds:>8.1f}",
                      flush=True)
            print(f"{name:<18}epoch time keras/fast: {per_epoch['keras'] / max(per_epoch['fast'], 1e-6):.0f}x",
                  flush=True)


if __name__ == "__main__":
    main()
