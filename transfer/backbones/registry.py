"""The backbone registry: name -> how to build it, preprocess for it, size it and fine-tune it.

Every family (``keras.applications``, the from-scratch nets, EfficientNet-Lite,
a trained model given by path) registers plain :class:`BackboneSpec` entries
here; this module imports none of them, so a new family is one new module and
one registration. Builders import Keras only when called, so listing the
registry stays fast and ``transfer --help`` never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from ..config import WEIGHTS_SOURCES, TrainConfig, fast_defaults
from ..errors import ConfigError, WeightsError, first_line

BACKBONE_LAYER = "backbone"


@dataclass(frozen=True)
class HeadDefaults:
    """The head a backbone gets unless the user asks for another."""

    pooling: str = "avg"
    dense: tuple[int, ...] = ()
    dropout: float = 0.2


def _no_imagenet(spec: "BackboneSpec", cache_dir: str | None = None) -> str:
    return "none (trained from scratch)"


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry.

    ``build(input_shape, weights=None|"imagenet", width=, depth=)`` returns the
    base without its top; with ``weights="imagenet"`` it fetches the family's
    pretrained weights or raises :class:`WeightsError` saying how to get them.
    ``unfreeze`` is where fine-tuning starts by default, in the syntax of
    ``--unfreeze``: ``after:LAYER`` (everything after a block output, a clean cut
    of the graph), ``LAYER`` (that layer and everything after it), ``N`` (the top
    N layers) or ``all``. ``params`` is the size of the base at the default
    settings; the registry test checks it against the built model.
    ``weights_source(spec, cache_dir=None)`` says where the pretrained weights come from and
    whether they are available here, for ``transfer backbones``.
    ``keras_download`` is the same network with Keras' own weights and
    preprocessing (``--weights keras``) for entries whose default weights come
    from elsewhere; ``source_files`` are the endings of the original weights
    files ``build(weights=PATH)`` reads (e.g. the archive on the index).
    """

    name: str
    build: Callable[..., Any]
    preprocessing: str
    default_size: int
    min_size: int
    unfreeze: str
    params: int
    kind: str  # "pretrained" (ImageNet) or "model" (a trained model): frozen in phase 1; "scratch": trained from the start
    head: HeadDefaults
    fine_tune_epochs: int
    description: str
    imagenet_file: str | None = None  # the no-top weights file Keras downloads into its cache
    imagenet_hash: str | None = None  # Keras' published checksum of that file (md5 or sha256)
    weights_source: Callable[..., str] = _no_imagenet  # (spec, cache_dir=None) -> text
    keras_download: "BackboneSpec | None" = None
    source_files: tuple[str, ...] = ()
    augment: str | None = None  # the default --augment when not the kind's (flip for pretrained, light for scratch)
    fine_tune: str = "on"  # the default --fine-tune: on (fine_tune_epochs of phase 2), auto (a probe decides) or off
    fine_tune_optimizer: str = "sgd"  # the default --fine-tune-optimizer
    deeper: str | None = None  # the default --deeper-unfreeze: under --fine-tune auto, probed once fine-tuning paid

    @property
    def pretrained(self) -> bool:
        """Whether the base starts trained, so phase 1 freezes it and fine-tuning keeps batch norm frozen."""
        return self.kind in ("pretrained", "model")


_REGISTRY: dict[str, BackboneSpec] = {}
#: functions that turn a ``--backbone`` value that is not a name (a path, say) into a spec, or return None
_SOURCES: list[Callable[[str], BackboneSpec | None]] = []


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def register_source(source: Callable[[str, bool], BackboneSpec | None]) -> None:
    """Accept ``--backbone`` values other than registry names (e.g. the path of a trained model).

    ``source(name, unsafe)``: ``unsafe`` (``--unsafe``) allows a model that holds Python code.
    """
    _SOURCES.append(source)


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str, unsafe: bool = False) -> BackboneSpec:
    """The registry entry for ``name``, a spec from a registered source, or an error listing every valid name."""
    if name.lower() in _REGISTRY:
        return _REGISTRY[name.lower()]
    for source in _SOURCES:
        spec = source(name, unsafe)
        if spec is not None:
            return spec
    raise ConfigError(f"unknown backbone {name!r}. Choose one of: {', '.join(names())} (see `transfer backbones`), "
                      "or give the path of a .keras model or a run folder.")


def resolve(config: TrainConfig) -> tuple[BackboneSpec, TrainConfig]:
    """Fill every backbone-dependent default of ``config`` and check it fits the backbone."""
    spec = get(config.backbone, config.unsafe)
    if spec.kind == "model":
        size = config.image_size or spec.default_size
        if config.weights not in (None, "none", "model") or size != spec.default_size:  # "model": as resolved before
            raise ConfigError(f"--backbone {config.backbone!r} is a trained model: it brings its own weights and "
                              f"input size ({spec.default_size}); drop --weights and --image-size.")
        weights = "model"
    elif config.weights == "model":
        raise ConfigError("--weights model is only for a backbone given as a model path.")
    elif config.weights == "keras":
        spec, weights = _keras_download(spec), "keras"
    else:
        weights = config.weights or ("imagenet" if spec.kind == "pretrained" else "none")
    if weights.endswith(WEIGHTS_SOURCES) and not weights.endswith(spec.source_files):
        raise ConfigError(f"--weights {weights!r}: {spec.name} reads only Keras weights files (.h5); "
                          "archives and original weights files are for inceptionv3 and vgg16.")
    if weights == "imagenet" and spec.kind == "scratch":
        raise ConfigError(f"{spec.name} is trained from scratch and has no ImageNet weights; "
                          "use --weights none or --weights PATH.")
    if spec.kind != "scratch" and (config.width != 1.0 or config.depth is not None):
        raise ConfigError(f"--width and --depth apply to from-scratch nets only, not to {spec.name}.")
    size = config.image_size or spec.default_size
    if size < spec.min_size:
        raise ConfigError(f"--image-size {size} is too small for {spec.name}; use at least {spec.min_size}.")
    augment = config.augment or spec.augment or ("flip" if spec.pretrained else "light")
    if config.fine_tune in ("auto", "on") and config.fine_tune_epochs is None and not spec.fine_tune_epochs:
        raise ConfigError(f"--fine-tune {config.fine_tune}: {spec.name} has no fine-tuning epochs by default; add "
                          "--fine-tune-epochs N (with auto, a maximum).")
    resolved = dataclasses.replace(
        config,
        backbone=spec.name,
        weights=weights,
        image_size=size,
        augment=augment,
        **fast_defaults(spec.pretrained, augment, config),
        pooling=config.pooling or spec.head.pooling,
        dense=tuple(config.dense) if config.dense is not None else spec.head.dense,
        dropout=config.dropout if config.dropout is not None else spec.head.dropout,
        # --fine-tune-epochs N alone asks for N epochs of fine-tuning, whatever the backbone's --fine-tune
        fine_tune=config.fine_tune or ("on" if config.fine_tune_epochs is not None else spec.fine_tune),
        fine_tune_optimizer=config.fine_tune_optimizer or spec.fine_tune_optimizer,
        fine_tune_epochs=config.fine_tune_epochs if config.fine_tune_epochs is not None else spec.fine_tune_epochs,
        unfreeze=config.unfreeze or spec.unfreeze,
        # a user who says where fine-tuning starts has chosen its depth
        deeper_unfreeze=config.deeper_unfreeze or (spec.deeper if config.unfreeze is None else None) or "none",
    )
    if config.deeper_unfreeze not in (None, "none") and resolved.fine_tune != "auto":
        raise ConfigError(f"--deeper-unfreeze {config.deeper_unfreeze!r} is probed only under --fine-tune auto, and "
                          f"this run's is {resolved.fine_tune!r}: use --fine-tune auto, or set how deep phase 2 "
                          "fine-tunes with --unfreeze.")
    return spec, resolved


def _keras_download(spec: BackboneSpec) -> BackboneSpec:
    """The entry with Keras' download: its twin, or itself when its ImageNet weights already are Keras'."""
    if spec.keras_download is not None:
        return spec.keras_download
    if spec.imagenet_file is None:
        raise ConfigError(f"--weights keras: Keras has no download for {spec.name}; use --weights imagenet "
                          "(its own pretrained weights, if any), none or PATH.")
    return spec


def build_backbone(spec: BackboneSpec, config: TrainConfig):
    """Build the base named ``backbone`` with the weights the (resolved) config asks for."""
    import keras

    shape = (config.image_size, config.image_size, 3)
    options = {"width": config.width, "depth": config.depth, "cache_dir": config.cache_dir}
    if config.weights in ("imagenet", "keras"):
        base = spec.build(shape, weights="imagenet", **options)
    elif spec.source_files and config.weights.endswith(spec.source_files):
        base = spec.build(shape, weights=config.weights, **options)
    elif config.weights == "model":
        base = spec.build(shape)
    else:
        base = _build_random(spec, shape, options)
        if config.weights != "none":
            _load_weights_file(base, config.weights, spec)
    return keras.Model(base.inputs, base.outputs, name=BACKBONE_LAYER)


def _build_random(spec: BackboneSpec, shape, options):
    try:
        return spec.build(shape, weights=None, **options)
    except ValueError as error:
        if "negative" not in str(error) and "too small" not in str(error):
            raise
        raise ConfigError(f"--image-size {shape[0]} is too small for {spec.name} with these --width/--depth "
                          "settings; use a larger size or fewer blocks.") from None


def _load_weights_file(base, path: str, spec: BackboneSpec) -> None:
    """Load strictly: Keras only warns when it skips layers it cannot match, which would leave them random."""
    _verify_checksum(path, spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            base.load_weights(path)
    except Exception as error:
        raise WeightsError(f"--weights {path!r} does not fit {spec.name} without its top "
                           f"(it must be saved from the same architecture): {first_line(error)}") from None


def _verify_checksum(path: str, spec: BackboneSpec) -> None:
    """A file named like Keras' ImageNet download must have Keras' published checksum (corrupt or swapped?)."""
    if os.path.basename(path) != spec.imagenet_file or not spec.imagenet_hash:
        return
    from ..data.audit import file_digest

    if file_digest(path, "md5" if len(spec.imagenet_hash) == 32 else "sha256") != spec.imagenet_hash:
        raise WeightsError(f"--weights {path!r} does not match the published checksum of {spec.imagenet_file} "
                           f"({spec.imagenet_hash}); the file is corrupt or not the original. Download it again.")


def fetch_weights(name: str, cache_dir: str | None = None) -> str:
    """Get the ImageNet weights of backbone ``name`` into its cache now; what ``transfer backbones`` then says."""
    spec = get(name)
    if spec.kind != "pretrained":
        raise ConfigError(f"{spec.name} has no ImageNet weights to fetch (it is a {spec.kind} backbone).")
    spec.build((spec.default_size, spec.default_size, 3), weights="imagenet", cache_dir=cache_dir)
    return f"{spec.name}: {spec.weights_source(spec, cache_dir)}"


def describe(spec: BackboneSpec) -> dict[str, Any]:
    """One row of ``transfer backbones``."""
    return {"name": spec.name, "kind": spec.kind, "input_size": spec.default_size, "params": spec.params,
            "preprocessing": spec.preprocessing, "unfreeze": spec.unfreeze, "description": spec.description,
            "weights": spec.weights_source(spec), "imagenet_file": spec.imagenet_file}
