"""transfer doctor on real photos with planted faults: flipped labels and near-duplicate copies.

A temporary copy of N training photos of a shared set; a seeded fraction of
them moved into another class folder under neutral names (flipped labels),
and some copies cropped by 4 %, scaled to 0.8 and re-encoded as JPEG q70,
saved under new names in their class (near-duplicates). Prints the recall and
precision of the flips among the label issues, the planted pairs found, the
other groups, and the seconds from a cold feature cache (and from a warm one).

With ``--train``, also what ``train --exclude label_issues.csv`` wins back: val
accuracy of the default recipe on the clean copy, on the flipped copy, and on
the flipped copy without the files doctor listed (the clean val/ of the set).

    python benchmarks/bench_doctor.py --data ../shared/data/blood_cells_pbc --images 1000
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile

from _common import DEFAULT_DATA, ROOT, timed

from PIL import Image


def planted(data: str, images: int, flip: float, copies: int, seed: int, target: str,
            strangers: list[str] = ()) -> tuple[set, list, set]:
    """Write the noisy copy of ``images`` training photos into ``target`` (class folders), with ``strangers``
    (photos of another set) in random classes; the flipped paths, the planted pairs and the strangers' paths,
    relative to ``target``."""
    rng = random.Random(seed)
    train = os.path.join(data, "train")
    classes = sorted(os.listdir(train))
    per_class = images // len(classes)
    chosen = [(c, n) for c in classes for n in sorted(os.listdir(os.path.join(train, c)))[:per_class]]
    flipped_idx = set(rng.sample(range(len(chosen)), round(flip * len(chosen))))
    flipped, pairs = set(), []
    for i, (label, name) in enumerate(chosen):
        given = rng.choice([c for c in classes if c != label]) if i in flipped_idx else label
        rel = os.path.join(given, f"img{i:05d}{os.path.splitext(name)[1]}")
        os.makedirs(os.path.join(target, given), exist_ok=True)
        shutil.copyfile(os.path.join(train, label, name), os.path.join(target, rel))
        if i in flipped_idx:
            flipped.add(rel)
    clean = [i for i in range(len(chosen)) if i not in flipped_idx]
    for k, i in enumerate(rng.sample(clean, copies)):
        label, name = chosen[i]
        original = os.path.join(label, f"img{i:05d}{os.path.splitext(name)[1]}")
        copy = os.path.join(label, f"copy{k:03d}.jpg")
        with Image.open(os.path.join(target, original)) as im:
            im = im.convert("RGB")
            w, h = im.size
            dx, dy = round(0.02 * w), round(0.02 * h)  # 4 % cropped in all: 2 % a side
            im = im.crop((dx, dy, w - dx, h - dy))
            im = im.resize((round(0.8 * im.width), round(0.8 * im.height)), Image.BILINEAR)
            im.save(os.path.join(target, copy), quality=70)
        pairs.append({original, copy})
    odd = set()
    for k, path in enumerate(strangers):
        rel = os.path.join(rng.choice(classes), f"odd{k:03d}{os.path.splitext(path)[1]}")
        shutil.copyfile(path, os.path.join(target, rel))
        odd.add(rel)
    return flipped, pairs, odd


def scores(diagnosis, flipped: set, pairs: list, odd: set) -> dict:
    found = {i["path"] for i in diagnosis.label_issues}
    hits = len(found & flipped)
    groups = [set(g["paths"]) for g in diagnosis.near_duplicates]
    matched = [p for p in pairs if any(p <= g for g in groups)]
    others = [g for g in groups if not any(p <= g for p in pairs)]
    return {"flips": len(flipped), "flagged": len(found), "recall": hits / max(1, len(flipped)),
            "precision": hits / max(1, len(found)), "pairs_found": len(matched), "pairs": len(pairs),
            "other_groups": len(others), "outliers": len(diagnosis.outliers),
            "strangers_found": len(odd & {o["path"] for o in diagnosis.outliers}), "strangers": len(odd)}


def with_clean_val(data: str, noisy: str, target: str) -> str:
    """``target``/train: the noisy copy; ``target``/val: the set's own (clean) validation photos."""
    shutil.copytree(noisy, os.path.join(target, "train"))
    val = next(os.path.join(data, s) for s in ("val", "validation") if os.path.isdir(os.path.join(data, s)))
    shutil.copytree(val, os.path.join(target, "val"))
    return target


def train_accuracy(data_dir: str, cache: str, exclude: list[str] = ()) -> float:
    """Val accuracy of the default recipe (head only: what the flips disturb most directly)."""
    from transfer import TrainConfig, train

    config = TrainConfig(data_dir=data_dir, output_dir=tempfile.mkdtemp(prefix="doctor-runs-"), cache_dir=cache,
                         fine_tune_epochs=0, verbose=0, exclude=list(exclude))
    return float(train(config).metrics["val"]["accuracy"])


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--flip", type=float, default=0.05)
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strangers", default=None, help="another set: photos of it planted as outliers")
    p.add_argument("--outliers", type=int, default=5, help="how many (with --strangers)")
    p.add_argument("--train", action="store_true", help="also train clean / noisy / noisy --exclude")
    args = p.parse_args()
    sys.path.insert(0, ROOT)
    from transfer.reports.doctor import doctor

    work = tempfile.mkdtemp(prefix="bench-doctor-")
    try:
        strangers = []
        if args.strangers:
            folder = os.path.join(args.strangers, "train")
            strangers = [os.path.join(folder, c, n) for c in sorted(os.listdir(folder))
                         for n in sorted(os.listdir(os.path.join(folder, c)))[:1]][:args.outliers]
        flipped, pairs, odd = planted(args.data, args.images, args.flip, args.copies, args.seed,
                                      os.path.join(work, "d"), strangers)
        cache = os.path.join(work, "cache")
        cold, cold_s = timed(doctor, os.path.join(work, "d"), cache_dir=cache, output=os.path.join(work, "out"))
        _, warm_s = timed(doctor, os.path.join(work, "d"), cache_dir=cache)
        result = scores(cold, flipped, pairs, odd)
        print(f"{os.path.basename(os.path.normpath(args.data))}: {cold.images} images, {result['flips']} flipped, "
              f"{result['pairs']} planted copies")
        print(f"label issues: {result['flagged']} flagged, recall {result['recall']:.3f}, "
              f"precision {result['precision']:.3f}")
        print(f"near-duplicates: {result['pairs_found']}/{result['pairs']} planted pairs found, "
              f"{result['other_groups']} other group(s)")
        print(f"outliers: {result['outliers']} flagged, {result['strangers_found']}/{result['strangers']} planted "
              "photos of another set among them")
        print(f"seconds: cold cache {cold_s:.1f}, warm cache {warm_s:.1f} ({warm_s / cold_s:.2f}x)")
        if args.train:
            both = with_clean_val(args.data, os.path.join(work, "d"), os.path.join(work, "t"))
            listed = [os.path.join("train", i["path"]) for i in cold.label_issues]
            accuracy = {"noisy": train_accuracy(both, cache), "noisy --exclude": train_accuracy(both, cache, listed)}
            print("val accuracy (clean val): " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items()))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
