"""Feeding Keras: decoded images as tf.data pipelines (in memory within a budget), and class weights."""

from __future__ import annotations

import logging
import os

import numpy as np

from ..config import parse_memory
from .dataset import Dataset, Example
from .images import MAX_PIXELS, load_image

log = logging.getLogger("transfer")


def make_tf_dataset(examples: list[Example], image_size: int, batch_size: int, *, shuffle: bool = False,
                    seed: int = 0, resize: str = "squash", cache: bool = True, max_pixels: int = MAX_PIXELS):
    """A batched ``tf.data`` pipeline of (float32 pixels 0-255, int label)."""
    images = decoded_images(examples, image_size, resize=resize, cache=cache, max_pixels=max_pixels)
    return batches(images, batch_size, shuffle=shuffle, seed=seed)


def decoded_images(examples: list[Example], image_size: int, *, resize: str = "squash", cache: bool = True,
                   max_pixels: int = MAX_PIXELS, budget: int | None = None):
    """(uint8 image, label) pairs, decoded in parallel.

    When they fit ``budget`` bytes (default :func:`memory_budget`), decoded
    images are cached in memory after the first pass;
    every pipeline :func:`batches` derives from this dataset shares that cache,
    so a new shuffle order (a new phase) decodes nothing again.
    """
    import tensorflow as tf

    size = (image_size, image_size)

    def decode(path):
        return load_image(os.fsdecode(path), size, resize, max_pixels)

    def load(path, label):
        image = tf.numpy_function(decode, [path], tf.uint8, stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image, label

    paths = [os.fsencode(e.path) for e in examples]
    labels = np.array([e.label for e in examples], dtype=np.int32)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache and decoded_bytes(examples, image_size) <= (memory_budget() if budget is None else budget):
        ds = ds.cache()
    return ds


def batches(images, batch_size: int, *, shuffle: bool = False, seed: int = 0):
    """Shuffled (seeded, fresh for each call) float32 batches of :func:`decoded_images`."""
    import tensorflow as tf

    if shuffle:
        ds = images.shuffle(int(images.cardinality()), seed=seed, reshuffle_each_iteration=True)
    else:
        ds = images
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def decoded_bytes(examples: list[Example], image_size: int) -> int:
    """RAM that the decoded images of ``examples`` take in :func:`decoded_images`' cache."""
    return len(examples) * image_size * image_size * 3


def memory_budget(limit: str = "25%") -> int:
    """Bytes an in-memory cache may use: ``--cache-memory`` (a size, or a percentage of RAM)."""
    return parse_memory(limit)


def class_weights(dataset: Dataset, mode: str) -> dict[int, float] | None:
    """Balanced weights (``n / (classes * n_c)``) when ``auto`` and the largest class is over 1.5x the smallest."""
    counts = [sum(e.label == i for e in dataset.splits["train"]) for i in range(len(dataset.classes))]
    if mode == "none" or max(counts) <= 1.5 * min(counts):
        return None
    total = sum(counts)
    weights = {i: total / (len(counts) * n) for i, n in enumerate(counts)}
    log.info("classes are imbalanced (%d to %d images): class weights %s", max(counts), min(counts),
             ", ".join(f"{dataset.classes[i]} {w:.2f}" for i, w in weights.items()))
    return weights
