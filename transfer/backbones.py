"""The backbone registry: name -> how to build it, preprocess for it, size it and fine-tune it.

Pretrained ``keras.applications`` models and the from-scratch nets of
:mod:`transfer.convnets` live in the same table, so the CLI, the tests and the
training code never branch on a model's name. Entries are plain data; builders
import Keras only when called, so listing the registry stays fast and
``transfer --help`` never imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from .config import TrainConfig
from .errors import ConfigError, WeightsError

BACKBONE_LAYER = "backbone"


@dataclass(frozen=True)
class HeadDefaults:
    """The head a backbone gets unless the user asks for another."""

    pooling: str = "avg"
    dense: tuple[int, ...] = ()
    dropout: float = 0.2


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry.

    ``unfreeze`` is where fine-tuning starts by default, in the syntax of
    ``--unfreeze``: ``after:LAYER`` (everything after a block output, a clean cut
    of the graph), ``LAYER`` (that layer and everything after it), ``N`` (the top
    N layers) or ``all``. ``params`` is the size of the base at the default
    settings; the registry test checks it against the built model.
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

    @property
    def pretrained(self) -> bool:
        """Whether the base starts trained, so phase 1 freezes it and fine-tuning keeps batch norm frozen."""
        return self.kind in ("pretrained", "model")


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> BackboneSpec:
    """The registry entry for ``name``, a model at path ``name``, or an error listing every valid name."""
    if name.lower() in _REGISTRY:
        return _REGISTRY[name.lower()]
    if os.path.exists(name):
        return from_model(name)
    raise ConfigError(f"unknown backbone {name!r}. Choose one of: {', '.join(names())} (see `transfer backbones`), "
                      "or give the path of a .keras model or a run folder.")


def from_model(path: str) -> BackboneSpec:
    """A backbone taken from a trained model: a ``transfer`` run folder or any ``.keras`` file.

    This is how a user transfers from their own in-house model. The model's
    convolutional base is kept with its weights and its own preprocessing;
    its head (everything from the last pooling/flatten layer on) is dropped.
    Reading the file's input size and preprocessing needs Keras, so a path
    backbone is only opened when training starts.
    """
    from .runs import MODEL_FILE, is_run_folder

    model_path = os.path.join(path, MODEL_FILE) if is_run_folder(path) else path
    if not (os.path.isfile(model_path) and model_path.endswith(".keras")):
        raise ConfigError(f"--backbone {path!r} is neither a registry name nor a .keras model or run folder.")
    source = _load_source(model_path)
    base, preprocessing = _conv_base(source, model_path)
    size = source.input_shape[1]
    return BackboneSpec(
        name=os.path.abspath(path), build=lambda input_shape, weights=None, **_: base, preprocessing=preprocessing,
        default_size=size, min_size=size, unfreeze="all", params=base.count_params(), kind="model",
        head=HeadDefaults(), fine_tune_epochs=10, description=f"the convolutional base of {model_path}")


def _load_source(model_path: str):
    import keras

    from . import layers  # noqa: F401  (a transfer model refers to its custom layers)

    try:
        return keras.saving.load_model(model_path, compile=False)
    except Exception as error:
        raise ConfigError(f"--backbone {model_path!r} cannot be loaded as a Keras model: {error}") from None


def _conv_base(model, model_path: str):
    """(base, preprocessing): a transfer model's own backbone, or any model cut before its last pooling/flatten."""
    import keras

    names = [layer.name for layer in model.layers]
    if BACKBONE_LAYER in names and "preprocess" in names:
        return model.get_layer(BACKBONE_LAYER), model.get_layer("preprocess").mode
    cuts = [layer for layer in model.layers if isinstance(
        layer, (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten))]
    if not cuts:
        raise ConfigError(f"--backbone {model_path!r} has no pooling or flatten layer to cut its head at.")
    return keras.Model(model.inputs, cuts[-1].input, name="source_base"), "none"


def _keras_app(class_name: str) -> Callable[..., Any]:
    def build(input_shape, weights=None, **_):
        import keras

        return getattr(keras.applications, class_name)(include_top=False, weights=weights, input_shape=input_shape)

    build.__doc__ = f"keras.applications.{class_name} without its top."
    return build


def _pretrained(name, class_name, preprocessing, size, unfreeze, params, description, weights, min_size=32):
    register(BackboneSpec(
        name=name, build=_keras_app(class_name), preprocessing=preprocessing, default_size=size,
        min_size=min_size, unfreeze=unfreeze, params=params, kind="pretrained", head=HeadDefaults(),
        fine_tune_epochs=10, description=description, imagenet_file=weights[0], imagenet_hash=weights[1]))


_KERAS_FILE = "_weights_tf_dim_ordering_tf_kernels_notop.h5"
_pretrained("inceptionv3", "InceptionV3", "tf", 299, "after:mixed7", 21802784,
            "Inception v3; fine-tunes the top two inception blocks",
            ("inception_v3" + _KERAS_FILE, "bcbd6486424b2319ff4ef7d526e38f63"), min_size=75)
_pretrained("vgg16", "VGG16", "caffe", 224, "after:block4_pool", 14714688, "VGG16; fine-tunes block 5",
            ("vgg16" + _KERAS_FILE, "6d6bbae143d832006294945121d1f1fc"))
_pretrained("resnet50", "ResNet50", "caffe", 224, "after:conv4_block6_out", 23587712, "ResNet50; fine-tunes stage 5",
            ("resnet50" + _KERAS_FILE, "4d473c1dd8becc155b73f8504c6f6626"))
_pretrained("resnet50v2", "ResNet50V2", "tf", 224, "after:conv4_block6_out", 23564800,
            "ResNet50 v2 (pre-activation); fine-tunes stage 5",
            ("resnet50v2" + _KERAS_FILE, "fac2f116257151a9d068a22e544a4917"))
_pretrained("mobilenetv2", "MobileNetV2", "tf", 224, "after:block_12_add", 2257984,
            "MobileNetV2 (fast on CPUs); fine-tunes the last three blocks",
            ("mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5", None))
_pretrained("efficientnetb0", "EfficientNetB0", "none", 224, "after:block5c_add", 4049571,
            "EfficientNet-B0; fine-tunes blocks 6-7", ("efficientnetb0_notop.h5", "50bc09e76180e00e4465e1a485ddc09d"))
_pretrained("xception", "Xception", "tf", 299, "block13_sepconv1_act", 20861480,
            "Xception; fine-tunes the exit flow",
            ("xception" + _KERAS_FILE, "b0042744bf5b25fce3cb969f33bebb97"), min_size=71)
_pretrained("densenet121", "DenseNet121", "torch", 224, "after:pool4_pool", 7037504,
            "DenseNet121; fine-tunes dense block 4",
            ("densenet121" + _KERAS_FILE, "30ee3e1110167f948a6b9946edeeb738"))

from . import convnets  # noqa: E402  (registers the from-scratch nets into the table above)


def resolve(config: TrainConfig) -> tuple[BackboneSpec, TrainConfig]:
    """Fill every backbone-dependent default of ``config`` and check it fits the backbone."""
    spec = get(config.backbone)
    if spec.kind == "model":
        if config.weights not in (None, "none") or (config.image_size or spec.default_size) != spec.default_size:
            raise ConfigError(f"--backbone {config.backbone!r} is a trained model: it brings its own weights and "
                              f"input size ({spec.default_size}); drop --weights and --image-size.")
        weights = "model"
    elif config.weights == "model":
        raise ConfigError("--weights model is only for a backbone given as a model path.")
    else:
        weights = config.weights or ("imagenet" if spec.kind == "pretrained" else "none")
    if weights == "imagenet" and spec.kind == "scratch":
        raise ConfigError(f"{spec.name} is trained from scratch and has no ImageNet weights; "
                          "use --weights none or --weights PATH.")
    if spec.kind != "scratch" and (config.width != 1.0 or config.depth is not None):
        raise ConfigError(f"--width and --depth apply to from-scratch nets only, not to {spec.name}.")
    size = config.image_size or spec.default_size
    if size < spec.min_size:
        raise ConfigError(f"--image-size {size} is too small for {spec.name}; use at least {spec.min_size}.")
    resolved = dataclasses.replace(
        config,
        backbone=spec.name,
        weights=weights,
        image_size=size,
        pooling=config.pooling or spec.head.pooling,
        dense=tuple(config.dense) if config.dense is not None else spec.head.dense,
        dropout=config.dropout if config.dropout is not None else spec.head.dropout,
        fine_tune_epochs=config.fine_tune_epochs if config.fine_tune_epochs is not None else spec.fine_tune_epochs,
        unfreeze=config.unfreeze or spec.unfreeze,
    )
    return spec, resolved


def build_backbone(spec: BackboneSpec, config: TrainConfig):
    """Build the base named ``backbone`` with the weights the (resolved) config asks for."""
    import keras

    shape = (config.image_size, config.image_size, 3)
    options = {"width": config.width, "depth": config.depth}
    if config.weights == "imagenet":
        base = _build_imagenet(spec, shape, options)
    elif config.weights == "model":
        base = spec.build(shape)
    else:
        base = _build_random(spec, shape, options)
        if config.weights != "none":
            _load_weights_file(base, config.weights, spec)
    return keras.Model(base.inputs, base.outputs, name=BACKBONE_LAYER)


def _build_imagenet(spec: BackboneSpec, shape, options):
    try:
        return spec.build(shape, weights="imagenet", **options)
    except Exception as error:  # Keras raises a bare Exception when a download fails
        if "fetch failure" not in str(error) and "HTTP" not in str(error):
            raise
        raise WeightsError(offline_message(spec, str(error))) from None


def _build_random(spec: BackboneSpec, shape, options):
    try:
        return spec.build(shape, weights=None, **options)
    except ValueError as error:
        if "negative" not in str(error) and "too small" not in str(error):
            raise
        raise ConfigError(f"--image-size {shape[0]} is too small for {spec.name} with these --width/--depth "
                          "settings; use a larger size or fewer blocks.") from None


def keras_cache_dir() -> str:
    """Where ``keras.utils.get_file`` keeps downloaded weights."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def offline_message(spec: BackboneSpec, error: str) -> str:
    url = re.search(r"https?://\S+?\.h5", error)
    filename = url.group(0).rsplit("/", 1)[-1] if url else spec.imagenet_file
    where = f" from {url.group(0)}" if url else ""
    return (f"could not download the ImageNet weights for {spec.name} (no network?). "
            f"Keras looks for {filename} in {keras_cache_dir()} (set KERAS_HOME to move it); "
            f"copy the file there{where}, or use --weights PATH (a local no-top weights file) "
            "or --weights none (random initialisation).")


def _load_weights_file(base, path: str, spec: BackboneSpec) -> None:
    """Load strictly: Keras only warns when it skips layers it cannot match, which would leave them random."""
    _verify_checksum(path, spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            base.load_weights(path)
    except Exception as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(f"--weights {path!r} does not fit {spec.name} without its top "
                           f"(it must be saved from the same architecture): {first}") from None


def _verify_checksum(path: str, spec: BackboneSpec) -> None:
    """A file named like Keras' ImageNet download must have Keras' published checksum (corrupt or swapped?)."""
    if os.path.basename(path) != spec.imagenet_file or not spec.imagenet_hash:
        return
    digest = hashlib.md5() if len(spec.imagenet_hash) == 32 else hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != spec.imagenet_hash:
        raise WeightsError(f"--weights {path!r} does not match the published checksum of {spec.imagenet_file} "
                           f"({spec.imagenet_hash}); the file is corrupt or not the original. Download it again.")


def describe(spec: BackboneSpec) -> dict[str, Any]:
    """One row of ``transfer backbones``."""
    return {"name": spec.name, "kind": spec.kind, "input_size": spec.default_size, "params": spec.params,
            "preprocessing": spec.preprocessing, "unfreeze": spec.unfreeze, "description": spec.description,
            "imagenet_file": spec.imagenet_file}
