"""The head's accuracy against the backbone's input size and the mirror view, over several seeds, per set.

Two things cost the feature pass its time: the input size (the backbone's
work grows with its square) and the mirror view (``--augment flip`` runs the
backbone twice per image). This measures what each buys, per set: for each
``--sizes`` entry it computes the cached features of train and val exactly as
a run caches them (both views), then fits the run's default head on the run's
own split (train, scored on val, as ``transfer train`` reports it) with
``--seeds`` seeds, once drawing the image or its mirror image each epoch (the
default, ``--augment flip``) and once on the image alone (``--augment none``,
half the feature pass). One seed's figure moves by a validation image or two;
the mean over seeds is what compares. The test split is never read.

    python benchmarks/bench_input.py ../shared/data/cats_vs_dogs ../shared/data/monkey_species \\
        ../shared/data/blood_cells_pbc --sizes 224,256,288 --cache-dir /tmp/input-cache
"""

from __future__ import annotations

import argparse
import dataclasses

from _common import ROOT  # noqa: F401  (puts the checkout on sys.path)
from bench_concat import score
from bench_pooling import pooled_features, set_up

VIEWS = {"flip": "image or mirror", "none": "image only"}


def measure(data_dir: str, cache_dir: str, backbone: str, sizes: list[int], seeds: int) -> dict:
    """(size, augment) -> mean val accuracy over ``seeds`` seeds; prints one line per size and augment."""
    import numpy as np

    config, dataset, class_weight, y, split = set_up(data_dir, cache_dir, backbone)
    means = {}
    for size in sizes:
        x, top, resolved = pooled_features(config, dataset, image_size=size, augment="flip")
        for augment, label in VIEWS.items():
            accuracy = [score(top, x, y, split, dataclasses.replace(resolved, seed=seed, augment=augment),
                              class_weight)[0] for seed in range(seeds)]
            means[size, augment] = float(np.mean(accuracy))
            print(f"    {size} px, {label:15s} mean {means[size, augment]:.4f} (sd {np.std(accuracy):.4f}): "
                  + " ".join(f"{a:.4f}" for a in accuracy), flush=True)
    return means


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets", nargs="+", help="data set folders")
    p.add_argument("--cache-dir", required=True, help="feature cache (kept: a second run reads the features)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="[%(default)s]")
    p.add_argument("--sizes", default="224,256,288", help="comma-separated input sizes [%(default)s]")
    p.add_argument("--seeds", type=int, default=5, help="heads fitted per size and view [%(default)s]")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = [measure(data_dir, args.cache_dir, args.backbone, sizes, args.seeds) for data_dir in args.sets]
    for key in rows[0]:
        mean = sum(r[key] for r in rows) / len(rows)
        print(f"mean over {len(rows)} sets, {key[0]} px, {VIEWS[key[1]]:15s}: {mean:.4f}")


if __name__ == "__main__":
    main()
