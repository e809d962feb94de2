"""What this machine computes on: decisions that depend on the device (mixed precision, the feature engine)."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU (asked once per process: listing devices initialises them)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))
