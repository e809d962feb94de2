"""Splitting: the stratified, seeded split made when DATA_DIR has no ``val/``; the split written to the run
folder (``split.csv``) so that a run can be reproduced exactly; the fingerprint --resume compares."""

from __future__ import annotations

import csv
import logging
import os

import numpy as np

from ..errors import DataError
from .audit import is_junk
from .dataset import SPLIT_ORDER, Dataset, Example

log = logging.getLogger("transfer")


def make_splits(usable, classes, split_dirs, val_split, seed) -> tuple[dict[str, list[Example]], str]:
    """The examples of each split, and where the split came from: the split folders, or ("random") a stratified,
    seeded split of the training images."""
    for split, split_classes in usable.items():
        unknown = sorted(set(split_classes) - set(classes))
        if unknown:
            raise DataError(f"{split_dirs[split]!r} has classes that train/ lacks: {', '.join(unknown)}.")
    pool = usable.get("train", usable.get("all"))
    splits = {s: [Example(p, classes.index(c)) for c, paths in usable[s].items() for p in paths]
              for s in ("val", "test") if s in usable}
    if "val" in splits:
        splits["train"] = [Example(p, i) for i, c in enumerate(classes) for p in pool[c]]
        source = "folders"
    else:
        splits["train"], splits["val"] = stratified_split([pool[c] for c in classes], val_split, seed, classes)
        source = "random"
    _check_split_classes(splits, classes, split_dirs)
    return {s: splits[s] for s in SPLIT_ORDER if s in splits}, source


def _check_split_classes(splits: dict[str, list[Example]], classes: list[str], split_dirs: dict[str, str]) -> None:
    """A val/ or test/ folder without images is an error; one that lacks some classes, a warning naming them."""
    for split in ("val", "test"):
        if split not in split_dirs:
            continue
        present = {e.label for e in splits[split]}
        if not present:
            raise DataError(f"{split_dirs[split]!r} has no class folders with images; add them, or remove the folder.")
        missing = [repr(c) for i, c in enumerate(classes) if i not in present]
        if missing:
            log.warning("%s has no images of class %s: %s accuracy is not measured for %s", split_dirs[split],
                        ", ".join(missing), "validation" if split == "val" else "test",
                        "it" if len(missing) == 1 else "them")


def stratified_split(per_class: list[list[str]], val_split: float, seed: int,
                     classes: list[str]) -> tuple[list[Example], list[Example]]:
    """Split each class separately so every class gets at least one validation image."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label, paths in enumerate(per_class):
        if len(paths) < 2:
            raise DataError(f"class {classes[label]!r} has {len(paths)} image; at least 2 are needed to "
                            "split off validation images (or provide a val/ folder).")
        order = rng.permutation(len(paths))
        n_val = min(len(paths) - 1, max(1, round(len(paths) * val_split)))
        val += [Example(paths[i], label) for i in sorted(order[:n_val])]
        train += [Example(paths[i], label) for i in sorted(order[n_val:])]
    return train, val


def write_manifest(dataset: Dataset, path: str) -> None:
    """One row per image: its path relative to the dataset root, class and split."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        for split, examples in dataset.splits.items():
            for e in examples:
                writer.writerow([os.path.relpath(e.path, dataset.root), dataset.classes[e.label], split])


def read_manifest(path: str, root: str, classes: list[str]) -> dict[str, list[Example]]:
    """The splits saved by :func:`write_manifest`, for reproducing or evaluating a run."""
    splits: dict[str, list[Example]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            splits.setdefault(row["split"], []).append(Example(os.path.join(root, row["path"]),
                                                               classes.index(row["label"])))
    return splits


def fingerprint(root: str) -> dict[str, list[int]]:
    """Every file under ``root`` (junk left out) -> [size, mtime in ns]: what a resumed run compares its data by.

    A stat per file, no read: cheap next to the audit, so ``--resume`` checks it before anything else.
    """
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not is_junk(d)]
        for name in filenames:
            if is_junk(name):
                continue
            path = os.path.join(dirpath, name)
            try:
                info = os.stat(path)
            except OSError:  # a broken symlink: the audit reports it; here it is a file without a size
                info = None
            found[os.path.relpath(path, root)] = [info.st_size, info.st_mtime_ns] if info else [-1, -1]
    return found


def changes(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, list[str]]:
    """The files added, removed and modified (size or modification time) between two fingerprints, sorted."""
    return {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "modified": sorted(p for p in set(before) & set(after) if list(before[p]) != list(after[p]))}
