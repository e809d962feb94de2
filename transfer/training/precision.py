"""The dtype policy of a run: float16 compute with float32 weights and output, or float32 throughout."""

from __future__ import annotations

import contextlib
import logging

import keras

from ..devices import has_gpu

log = logging.getLogger("transfer")


@contextlib.contextmanager
def dtype_policy(mode: str):
    """``mixed_float16`` while a run builds and trains (auto: only with a GPU); the global policy is restored after.

    The head's softmax layer is float32 whatever the policy, so probabilities
    and the loss keep full precision.
    """
    previous = keras.mixed_precision.global_policy()
    mixed = is_mixed(mode)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    if mixed:
        log.info("mixed precision: float16 compute, float32 weights and output")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def is_mixed(mode: str) -> bool:
    """Whether ``--mixed-precision on|off|auto`` means float16 compute here (auto: only with a GPU)."""
    return mode == "on" or (mode == "auto" and has_gpu())
