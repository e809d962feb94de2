"""Does a head on two backbones' features, concatenated, beat the best single backbone? Measured per set.

Issue 23 asks ``--backbone auto`` to keep "the best one, or a concatenation of
the best two's features where that measures better". Building a two-backbone
model touches every later stage (fine-tuning, boundary caching, Grad-CAM,
every export format), so this measures first whether it would pay. For each
set it computes each candidate's cached features exactly as ``--backbone
auto`` does (same cache, same views), fits the run's default head on each
candidate and on every pair's concatenated features with the same compiled
fit, and scores all of them by the same 5-fold cross-validation over train and
val (the test split is never read). A pair with a candidate cached without
the mirror view (its default is not ``--augment flip``) is fitted on the image
view alone. Prints one table per set, then the best
single candidate against the best pair, and against the pair of the two best
singles (what ``auto`` would build), in points.

    python benchmarks/bench_concat.py ../shared/data/blood_cells_pbc ../shared/data/monkey_species \\
        ../shared/data/cats_vs_dogs --cache-dir /tmp/concat-cache
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

from _common import ROOT  # noqa: F401  (puts the checkout on sys.path)

DEFAULT_CANDIDATES = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,inceptionv3"


def candidate_features(config, dataset, names: list[str]) -> dict[str, tuple]:
    """name -> (features of train + val, (rows, views, width); a head top for them; its resolved config)."""
    from transfer import features
    from transfer.backbones import resolve
    from transfer.heads import build_model

    digests = {c.path: c.digest for c in dataset.report.used}
    examples = dataset.splits["train"] + dataset.splits["val"]
    out = {}
    for name in names:
        spec, resolved = resolve(dataclasses.replace(config, backbone=name))
        model = build_model(spec, resolved, len(dataset.classes))
        cache = features.frozen_phase_cache(model, resolved, digests)
        started = time.monotonic()
        x = cache.features(examples)
        print(f"  {name}: features {x.shape} in {time.monotonic() - started:.0f} s", flush=True)
        out[name] = (x, features.head_top(model), resolved)
    return out


def concatenated_top(top, width: int):
    """``top`` (the run's head after pooling) rebuilt for features ``width`` wide, freshly initialized."""
    import keras

    return keras.models.clone_model(top, input_tensors=keras.Input((None, width), name="pooled_features"))


def score(top, x, y, folds, config, class_weight) -> tuple[float, float]:
    """(accuracy, loss) over every fold's held-out rows, each fold's head fitted as ``--backbone auto`` fits it."""
    import numpy as np

    from transfer.training.auto import _fit_heads

    scores = _fit_heads(top, x, y, folds, config, class_weight)
    weights = [len(f) for f in folds]
    return (float(np.average([s[0] for s in scores], weights=weights)),
            float(np.average([s[1] for s in scores], weights=weights)))


def measure(data_dir: str, cache_dir: str, names: list[str]) -> dict[str, float]:
    """Every candidate's and pair's cross-validated accuracy on one set; prints its table."""
    import numpy as np

    from transfer import data
    from transfer.config import TrainConfig
    from transfer.training.auto import _folds

    config = TrainConfig(data_dir=data_dir, cache_dir=cache_dir).validate()
    dataset = data.scan(config.data_dir, config.val_split, config.seed, cache_dir=cache_dir)
    class_weight = data.class_weights(dataset, config.class_weight)
    y = np.array([e.label for e in dataset.splits["train"] + dataset.splits["val"]], np.int32)
    folds = _folds(y, config.seed)
    print(f"{data_dir}: {len(y)} images in train + val, {len(dataset.classes)} classes, 5-fold", flush=True)
    found = candidate_features(config, dataset, names)
    results = {}
    for name, (x, top, resolved) in found.items():
        results[name] = score(top, x, y, folds, resolved, class_weight)
    for a, b in itertools.combinations(names, 2):
        (xa, top, resolved), (xb, _, _) = found[a], found[b]
        views = min(xa.shape[1], xb.shape[1])  # a backbone cached without the mirror view: the image alone
        x = np.concatenate([xa[:, :views], xb[:, :views]], axis=-1)
        if views == 1:  # no mirror view to draw
            resolved = dataclasses.replace(resolved, augment="none")
        results[f"{a} + {b}"] = score(concatenated_top(top, x.shape[-1]), x, y, folds, resolved, class_weight)
    for key, (accuracy, loss) in sorted(results.items(), key=lambda item: -item[1][0]):
        print(f"    {key:45s} accuracy {accuracy:.4f}  loss {loss:.4f}", flush=True)
    singles = sorted(names, key=lambda n: -results[n][0])
    best_single = results[singles[0]][0]
    best_pair = max(v[0] for k, v in results.items() if " + " in k)
    top_two = results.get(f"{singles[0]} + {singles[1]}", results.get(f"{singles[1]} + {singles[0]}"))[0]
    print(f"  best single {singles[0]} {best_single:.4f}; pair of the two best singles {top_two:.4f} "
          f"({(top_two - best_single) * 100:+.1f} points); best pair {best_pair:.4f} "
          f"({(best_pair - best_single) * 100:+.1f} points)", flush=True)
    return {"single": best_single, "top_two": top_two, "pair": best_pair}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets", nargs="+", help="data set folders")
    p.add_argument("--cache-dir", required=True, help="feature cache (kept: a second run reads the features)")
    p.add_argument("--candidates", default=DEFAULT_CANDIDATES, help="comma-separated backbones [%(default)s]")
    args = p.parse_args()
    names = args.candidates.split(",")
    rows = [measure(data_dir, args.cache_dir, names) for data_dir in args.sets]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    print(f"mean over {len(rows)} sets: best single {mean['single']:.4f}, pair of the two best "
          f"{mean['top_two']:.4f} ({(mean['top_two'] - mean['single']) * 100:+.1f} points), best pair "
          f"{mean['pair']:.4f} ({(mean['pair'] - mean['single']) * 100:+.1f} points)")


if __name__ == "__main__":
    main()
