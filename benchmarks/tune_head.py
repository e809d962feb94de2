"""Variants of phase 1 on cached features, head only: epochs run, validation loss and accuracy per set.

Each variant is a comma-separated list of TrainConfig settings; all runs share one feature cache, so
only the first run of a set computes features.

    python benchmarks/tune_head.py ../shared/data/blood_cells_pbc ../shared/data/cats_vs_dogs \\
        --variant patience=5 --variant patience=20 --variant patience=20,lr=3e-4 --cache-dir /tmp/hb/cache
"""

from __future__ import annotations

import argparse
import ast
import os
import tempfile

from _common import timed


def settings(text: str) -> dict:
    """``patience=20,lr=3e-4`` -> {"patience": 20, "lr": 0.0003} (values as Python literals, else text)."""
    pairs = (item.split("=", 1) for item in text.split(",") if item)
    return {key: _value(value) for key, value in pairs}


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main() -> None:
    from transfer.config import TrainConfig
    from transfer.training import train

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", nargs="+")
    p.add_argument("--variant", action="append", required=True, help="settings, e.g. patience=20,lr=3e-4")
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for data in args.data:
            name = os.path.basename(os.path.normpath(data))
            for i, variant in enumerate(args.variant):
                config = TrainConfig(data_dir=data, fine_tune_epochs=0, output_dir=work, name=f"{name}-{i}",
                                     cache_dir=args.cache_dir or os.path.join(work, "cache"), verbose=0,
                                     **settings(variant))
                result, seconds = timed(train, config)
                val = result.metrics["val"]
                print(f"{name:<18}{variant:<28}{result.metrics['epochs']['head']:>5}{val['loss']:>8.4f}"
                      f"{val['accuracy']:>8.4f}{seconds:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
