"""Named starting points: settings chosen by measurement, stored as plain data.

A preset fills in the settings it names; anything the user sets explicitly
still wins. ``small-data-transfer`` was chosen on cats-vs-dogs (2000 training
photos, reported on its validation set) on 2 CPU cores, from EfficientNet-Lite0's
ImageNet weights: the head alone on cached features, trained on each image
or its mirror image (both cached, so augmentation costs one more backbone pass
in all, not one per epoch), predicting on both (test-time mirroring). Larger
inputs, label smoothing, more epochs, more dropout and fine-tuning the top
blocks were measured too and added nothing within the noise, at up to 5 times
the time (BENCHMARKS.md). ``small-data-scratch`` was chosen on cats-vs-dogs (2000 training
photos, reported on its validation set) within a 15-minute budget on 2 CPU
cores: five blocks (a receptive field that covers the image), light rather
than strong augmentation, 80 px rather than 96 and a fifth block of 256
filters rather than 512 (more epochs in the budget) and test-time mirroring
each helped; four runs reached 85.4-85.7 % in 14.1-14.5 minutes (see
BENCHMARKS.md). Its budget is a ``time_limit`` rather than a number of
epochs, because an epoch's time varies from machine to machine and, on the
same 2 cores, between about 20 s and 41 s: the cosine schedule follows the
time, so a slow machine gets fewer epochs and still a finished schedule (and
a lower accuracy).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import TrainConfig
from .errors import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "small-data-transfer": {
        # 224 px and the mirror view, as measured: Lite0's own defaults (288 px, the image alone) came later
        "backbone": "efficientnet_lite0", "weights": "imagenet", "image_size": 224, "augment": "flip", "tta": True,
        "epochs": 10, "lr": 1e-3, "optimizer": "adam", "dropout": 0.2, "fine_tune_epochs": 0,
    },
    "small-data-scratch": {
        "backbone": "smallvgg", "depth": 5, "weights": "none", "image_size": 80, "augment": "light", "tta": True,
        "optimizer": "adamw", "weight_decay": 0.05, "lr": 2e-3, "lr_schedule": "cosine", "epochs": 60,
        "time_limit": "14m", "fine_tune_epochs": 0, "batch_size": 32, "patience": 60, "monitor": "val_accuracy",
        "validation_freq": 5,
    },
}


def apply_preset(name: str | None, explicit: dict[str, Any]) -> TrainConfig:
    """A config from preset ``name`` (or the defaults), with the user's ``explicit`` settings on top."""
    if name is not None and name not in PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}; got {name!r}.")
    values = {**PRESETS.get(name, {}), **explicit}
    unknown = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}.")
    return TrainConfig(preset=name, **values)
