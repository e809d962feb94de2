"""The run configuration: one dataclass holding every setting of a training run.

It is the single source of defaults (the CLI reads them from here), it is
validated before any work starts, and it is saved as JSON in every run folder
so a run can be reproduced and its model used without remembering any flag.
Importing this module must not import TensorFlow: the CLI's ``--help`` uses it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
POOLINGS = ("avg", "max", "flatten")
AUGMENT_PRESETS = ("none", "flip", "light", "strong")
RESIZE_MODES = ("squash", "crop")
MONITORS = ("val_loss", "val_accuracy")
CLASS_WEIGHTS = ("auto", "none")
LR_SCHEDULES = ("plateau", "cosine")
CACHE_FEATURES = ("auto", "on", "off")
MIXED_PRECISION = ("auto", "on", "off")
FEATURE_ENGINES = ("auto", "tflite", "keras")


@dataclass
class TrainConfig:
    """Every setting of one training run.

    ``None`` means "the backbone's default": weights, image size, head shape,
    number of fine-tuning epochs and unfreeze point depend on the chosen backbone and are
    filled in by :func:`transfer.backbones.resolve` before training; the saved
    config always holds the resolved values.
    """

    data_dir: str = ""
    preset: str | None = None  # see transfer.presets; recorded so a run says where its settings came from
    # where the run goes
    output_dir: str = "models"
    name: str | None = None
    overwrite: bool = False
    # model
    backbone: str = "efficientnet_lite0"  # ImageNet weights from pip: works offline
    weights: str | None = None
    image_size: int | None = None
    width: float = 1.0
    depth: int | None = None
    pooling: str | None = None
    dense: tuple[int, ...] | None = None
    dropout: float | None = None
    l2: float = 0.0
    batch_norm: bool = False
    # data
    val_split: float = 0.2
    seed: int = 42
    batch_size: int = 32
    augment: str | None = None  # None: the backbone's (flip for pretrained ones: feature caching keeps it; light)
    resize: str = "squash"
    tta: bool = False  # predict (and validate) on each image and its mirror image, averaged; costs 2x at inference
    class_weight: str = "auto"  # auto: balanced weights when the largest class is over 1.5x the smallest
    # the dataset audit
    max_pixels: int = 90_000_000
    strict: bool = False
    max_skip_fraction: float = 0.1
    dedupe: bool = False
    cache_dir: str | None = None
    # phase 1: head only, backbone frozen
    epochs: int = 10
    lr: float = 1e-3
    optimizer: str = "adam"
    lr_schedule: str = "plateau"  # plateau: reduce on a validation plateau; cosine: decay to 0 over each phase
    weight_decay: float | None = None  # decoupled, both phases; None: the optimizer's default (AdamW 0.004)
    label_smoothing: float = 0.0  # targets 1 - s + s/n and s/n instead of 1 and 0
    # phase 2: fine-tuning the top of the backbone
    fine_tune_epochs: int | None = None
    fine_tune_lr: float = 1e-4
    fine_tune_optimizer: str = "sgd"
    unfreeze: str | None = None
    # callbacks
    patience: int = 5
    monitor: str = "val_loss"
    restore_best: bool = True  # end with the best epoch on validation (from either phase), not the last
    validation_freq: int = 1  # validate every N epochs, and on each phase's last epoch
    time_limit: str | None = None  # stop training after this long (90s, 15m, 1.5h), counted from the start
    # speed
    cache_features: str = "auto"  # auto: phase 1 on cached backbone features when it is frozen, --augment none|flip
    cache_memory: str = "25%"  # RAM for each in-memory cache (decoded images, features): bytes (4G, 512M) or % of RAM
    mixed_precision: str = "auto"  # auto: float16 compute only when a GPU is present
    feature_engine: str = "auto"  # auto: cached features through TFLite/XNNPACK on a CPU, checked against Keras
    jit: bool = False  # compile training steps with XLA
    verbose: int = 1

    def validate(self) -> "TrainConfig":
        """Check every value before any work starts; return self for chaining."""
        _check(bool(self.data_dir), "DATA_DIR is required.")
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--fine-tune-optimizer", self.fine_tune_optimizer, OPTIMIZERS)
        if self.augment is not None:
            _choice("--augment", self.augment, AUGMENT_PRESETS)
        _choice("--resize", self.resize, RESIZE_MODES)
        _choice("--monitor", self.monitor, MONITORS)
        _choice("--class-weight", self.class_weight, CLASS_WEIGHTS)
        _choice("--lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("--cache-features", self.cache_features, CACHE_FEATURES)
        _choice("--mixed-precision", self.mixed_precision, MIXED_PRECISION)
        _choice("--feature-engine", self.feature_engine, FEATURE_ENGINES)
        _check(0 <= self.max_skip_fraction <= 1,
               f"--max-skip-fraction must be between 0 and 1, got {self.max_skip_fraction}.")
        _check(self.max_pixels >= 1, f"--max-pixels must be positive, got {self.max_pixels}.")
        parse_memory(self.cache_memory)
        parse_duration(self.time_limit)
        if self.pooling is not None:
            _choice("--pooling", self.pooling, POOLINGS)
        _check(0 < self.val_split < 1, f"--val-split must be between 0 and 1 (exclusive), got {self.val_split}.")
        _check(self.epochs >= 0, f"--epochs must be 0 or more, got {self.epochs}.")
        _check(self.fine_tune_epochs is None or self.fine_tune_epochs >= 0,
               f"--fine-tune-epochs must be 0 or more, got {self.fine_tune_epochs}.")
        _check(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}.")
        _check(self.lr > 0 and self.fine_tune_lr > 0, "--lr and --fine-tune-lr must be positive.")
        _check(self.dropout is None or 0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}.")
        _check(self.l2 >= 0, f"--l2 must be 0 or more, got {self.l2}.")
        _check(self.weight_decay is None or self.weight_decay >= 0,
               f"--weight-decay must be 0 or more, got {self.weight_decay}.")
        _check(0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}.")
        _check(self.patience >= 1, f"--patience must be at least 1, got {self.patience}.")
        _check(self.validation_freq >= 1, f"--validation-freq must be at least 1, got {self.validation_freq}.")
        _check(self.width > 0, f"--width must be positive, got {self.width}.")
        _check(self.depth is None or self.depth >= 1, f"--depth must be at least 1, got {self.depth}.")
        _check(not self.dense or all(d >= 1 for d in self.dense), f"--dense sizes must be positive, got {self.dense}.")
        _check(self.image_size is None or self.image_size >= 8, f"--image-size must be at least 8, got {self.image_size}.")
        self._validate_weights()
        return self

    def _validate_weights(self) -> None:
        if self.weights in (None, "imagenet", "none", "model"):
            return
        path = self.weights
        _check(os.path.isfile(path),
               f"--weights {path!r}: no such file. Use --weights imagenet, --weights none, "
               "or the path of a no-top weights file (.h5 or .weights.h5).")
        _check(path.endswith(".h5"),
               f"--weights {path!r}: expected a Keras weights file ending in .h5 or .weights.h5.")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["dense"] = list(self.dense) if self.dense is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from saved JSON, ignoring keys that a newer or older version added."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if values.get("dense") is not None:
            values["dense"] = tuple(values["dense"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def default(name: str) -> Any:
    """The default of one field, so that the CLI never repeats a default."""
    return TrainConfig.__dataclass_fields__[name].default


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{option} must be one of {', '.join(choices)}; got {value!r}.")


_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | None) -> float | None:
    """Seconds from ``90s``, ``15m``, ``1.5h`` or a number of seconds; None for None or ``none``."""
    if text is None or str(text).strip().lower() == "none":
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text), re.IGNORECASE)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"--time-limit must be a duration such as 90s, 15m or 1.5h (or none); got {text!r}.")
    return float(match.group(1)) * _SECONDS[(match.group(2) or "s").lower()]


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(text: str, total: int | None = None) -> int:
    """Bytes from ``4G``, ``512M``, ``1.5G``, ``1000000`` or ``25%`` (of ``total``, default physical RAM)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%|[KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ConfigError(f"--cache-memory must be a size such as 4G, 512M or 25% (of RAM); got {text!r}.")
    number, unit = float(match.group(1)), match.group(2).upper()
    if unit == "%":
        if number > 100:
            raise ConfigError(f"--cache-memory {text!r}: a percentage of RAM must be at most 100%.")
        return int(number / 100 * (total if total is not None else physical_memory()))
    return int(number * _UNITS[unit])


def physical_memory() -> int:
    """Bytes of RAM (8 GiB where the platform cannot say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30
