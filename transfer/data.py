"""The dataset: finding images and classes, splitting them, and feeding them to Keras.

Expected layouts (class names are folder names, sorted)::

    photos/                      photos/
      cats/  a.jpg ...             train/ cats/ dogs/
      dogs/  b.png ...             val/   cats/ dogs/     (or validation/)
                                   test/  cats/ dogs/     (optional)

Without ``val/`` a stratified, seeded split is made; either way the split is
written to the run folder (``split.csv``) so a run can be reproduced exactly.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import DataError
from .images import is_image_name, load_image

log = logging.getLogger("transfer")

SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
#: names that operating systems and archivers leave behind; never images, never classes
IGNORED_NAMES = frozenset({"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"})


@dataclass
class Example:
    path: str
    label: int


@dataclass
class Dataset:
    """What was found in DATA_DIR: class names and the examples of each split."""

    root: str
    classes: list[str]
    splits: dict[str, list[Example]] = field(default_factory=dict)
    split_source: str = "folders"  # or "random": made here with --val-split and --seed

    def counts(self) -> dict[str, dict[str, int]]:
        return {split: {c: sum(e.label == i for e in examples) for i, c in enumerate(self.classes)}
                for split, examples in self.splits.items()}


def scan(data_dir: str, val_split: float = 0.2, seed: int = 42) -> Dataset:
    """Find the classes and splits of ``data_dir``; errors name the folder at fault."""
    if not os.path.isdir(data_dir):
        raise DataError(f"dataset folder {data_dir!r} does not exist or is not a folder.")
    root = os.path.abspath(data_dir)
    folders = _subfolders(root)
    if "train" in folders and all(f.lower() in SPLIT_FOLDERS for f in folders):
        return _scan_split_layout(root, folders, val_split, seed)
    classes, per_class = _scan_classes(root)
    train, val = stratified_split(per_class, val_split, seed, classes)
    return Dataset(root, classes, {"train": train, "val": val}, split_source="random")


def _scan_split_layout(root, folders, val_split, seed) -> Dataset:
    classes, train_files = _scan_classes(os.path.join(root, "train"))
    splits: dict[str, list[Example]] = {}
    for folder in folders:
        split = SPLIT_FOLDERS[folder.lower()]
        if split == "train":
            continue
        split_classes, files = _scan_classes(os.path.join(root, folder), require=1)
        unknown = sorted(set(split_classes) - set(classes))
        if unknown:
            raise DataError(f"{os.path.join(root, folder)!r} has classes that train/ lacks: {', '.join(unknown)}.")
        splits[split] = [Example(p, classes.index(c)) for c, paths in zip(split_classes, files) for p in paths]
    if "val" in splits:
        splits["train"] = [Example(p, i) for i, paths in enumerate(train_files) for p in paths]
        source = "folders"
    else:
        splits["train"], splits["val"] = stratified_split(train_files, val_split, seed, classes)
        source = "random"
    return Dataset(root, classes, {k: splits[k] for k in ("train", "val", "test") if k in splits}, source)


def _subfolders(path: str) -> list[str]:
    return sorted(e.name for e in os.scandir(path)
                  if e.is_dir() and not e.name.startswith(".") and e.name not in IGNORED_NAMES)


def _scan_classes(folder: str, require: int = 2) -> tuple[list[str], list[list[str]]]:
    """Class names (sorted) and their image files, searched recursively."""
    classes = _subfolders(folder)
    files = [_images_under(os.path.join(folder, c)) for c in classes]
    for name, paths in zip(classes, files):
        if not paths:
            raise DataError(f"class folder {os.path.join(folder, name)!r} has no images; "
                            "add images or remove the folder.")
    if len(classes) < require:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DataError(f"{folder!r} needs at least {require} class folders (one per class) with images; "
                        f"found {found}.")
    return classes, files


def _images_under(folder: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in IGNORED_NAMES)
        found += [os.path.join(dirpath, f) for f in sorted(filenames)
                  if not f.startswith(".") and f not in IGNORED_NAMES and is_image_name(f)]
    return found


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


def make_tf_dataset(examples: list[Example], image_size: int, batch_size: int, *, shuffle: bool = False,
                    seed: int = 0, resize: str = "squash", cache: bool = True):
    """A batched ``tf.data`` pipeline of (float32 pixels 0-255, int label).

    Decoding runs in parallel; decoded, resized images are cached in memory
    after the first epoch when they fit, so later epochs decode nothing.
    """
    import tensorflow as tf

    size = (image_size, image_size)

    def decode(path):
        return load_image(os.fsdecode(path), size, resize)

    def load(path, label):
        image = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image, label

    paths = [e.path for e in examples]
    labels = np.array([e.label for e in examples], dtype=np.int32)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache and len(examples) * image_size * image_size * 3 <= memory_budget():
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(len(examples), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def memory_budget() -> int:
    """Bytes of decoded images worth caching in RAM: a quarter of physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2 << 30
