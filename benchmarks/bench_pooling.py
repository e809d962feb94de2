"""Which pooling of the backbone's last feature map should the head see: average, max, or both concatenated?

fastai's ``vision_learner`` concatenates average and max pooling by default;
Keras' guide and TF-Hub average. This measures it rather than assuming it, per
set, for one backbone: it computes the cached features twice (``--pooling avg``
and ``--pooling max``, each exactly as a run caches them, both views), fits the
run's default head on each and on the two concatenated, and scores each two
ways: on the run's own split (fitted on train, scored on val, as ``transfer
train`` reports it) and by 5-fold cross-validation over train and val (as
``--backbone auto`` compares backbones; more photos, so a smaller standard
error). The test split is never read.

    python benchmarks/bench_pooling.py ../shared/data/blood_cells_pbc ../shared/data/monkey_species \\
        ../shared/data/cats_vs_dogs --cache-dir /tmp/pool-cache
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from _common import ROOT  # noqa: F401  (puts the checkout on sys.path)
from bench_concat import concatenated_top, score


def pooled_features(config, dataset, **settings):
    """(features of train + val: rows, views, width; the head top for them; the resolved config), computed as a run
    with ``config`` changed by ``settings`` caches them (or read from its cache)."""
    from transfer import features
    from transfer.backbones import resolve
    from transfer.heads import build_model

    digests = {c.path: c.digest for c in dataset.report.used}
    spec, resolved = resolve(dataclasses.replace(config, **settings))
    model = build_model(spec, resolved, len(dataset.classes))
    started = time.monotonic()
    x = features.frozen_phase_cache(model, resolved, digests).features(dataset.splits["train"] + dataset.splits["val"])
    print(f"  {settings}: features {x.shape} in {time.monotonic() - started:.0f} s", flush=True)
    return x, features.head_top(model), resolved


def set_up(data_dir: str, cache_dir: str, backbone: str):
    """(config, dataset, class weights, labels of train + val, [the val rows]): a set as the run splits it."""
    import numpy as np

    from transfer import data
    from transfer.config import TrainConfig

    config = TrainConfig(data_dir=data_dir, cache_dir=cache_dir, backbone=backbone).validate()
    dataset = data.scan(config.data_dir, config.val_split, config.seed, cache_dir=cache_dir)
    class_weight = data.class_weights(dataset, config.class_weight)
    y = np.array([e.label for e in dataset.splits["train"] + dataset.splits["val"]], np.int32)
    split = [np.arange(len(dataset.splits["train"]), len(y))]
    print(f"{data_dir}: {len(dataset.splits['train'])} train + {len(split[0])} val, {len(dataset.classes)} "
          f"classes, {backbone}", flush=True)
    return config, dataset, class_weight, y, split


def measure(data_dir: str, cache_dir: str, backbone: str) -> dict[str, tuple[float, float]]:
    """name -> (val accuracy on the run's split, 5-fold accuracy) for avg, max and avg+max; prints a table."""
    import numpy as np

    from transfer.training.auto import _folds

    config, dataset, class_weight, y, split = set_up(data_dir, cache_dir, backbone)
    folds = _folds(y, config.seed)
    (xa, top, resolved), (xm, _, _) = (pooled_features(config, dataset, pooling=p) for p in ("avg", "max"))
    candidates = {"avg": (xa, top), "max": (xm, top), "avg+max": (np.concatenate([xa, xm], axis=-1), None)}
    results = {}
    for name, (x, head) in candidates.items():
        head = head or concatenated_top(top, x.shape[-1])
        (val, val_loss), (cv, cv_loss) = (score(head, x, y, held, resolved, class_weight) for held in (split, folds))
        results[name] = (val, cv)
        print(f"    {name:8s} val {val:.4f} (loss {val_loss:.4f})   5-fold {cv:.4f} (loss {cv_loss:.4f})", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets", nargs="+", help="data set folders")
    p.add_argument("--cache-dir", required=True, help="feature cache (kept: a second run reads the features)")
    p.add_argument("--backbone", default="efficientnet_lite0", help="[%(default)s]")
    args = p.parse_args()
    rows = [measure(data_dir, args.cache_dir, args.backbone) for data_dir in args.sets]
    for name in rows[0]:
        val = sum(r[name][0] for r in rows) / len(rows)
        cv = sum(r[name][1] for r in rows) / len(rows)
        print(f"mean over {len(rows)} sets, {name:8s}: val {val:.4f}, 5-fold {cv:.4f}")


if __name__ == "__main__":
    main()
