"""What this machine computes on: decisions that depend on the device (mixed precision, the feature engine),
and the record of the environment that every run folder keeps."""

from __future__ import annotations

import functools
import os
import platform
from typing import Any


@functools.lru_cache(maxsize=None)
def has_gpu() -> bool:
    """Whether TensorFlow sees a GPU (asked once per process: listing devices initialises them)."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def cpu_cores() -> int:
    """The cores this process may run on (a container's or ``taskset``'s share, not the whole machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def describe() -> dict[str, Any]:
    """The CPU cores and the names of the GPUs that TensorFlow sees."""
    import tensorflow as tf

    gpus = [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]
    return {"cpu_cores": cpu_cores(), "gpus": gpus}


def environment() -> dict[str, Any]:
    """What a run ran on (environment.json): the versions that can change its numbers, the platform, the devices."""
    import keras
    import numpy
    import PIL
    import tensorflow as tf

    from . import __version__

    return {"transfer": __version__, "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": numpy.__version__, "pillow": PIL.__version__,
            "platform": platform.platform(), "machine": platform.machine(), "devices": describe()}
