"""The from-scratch family: small convnets trained from random weights, registered beside the pretrained ones.

Each builder returns only the convolutional base; the dense layers that the
classic architectures end with are the registry entry's default head, so
``--dense``/``--dropout`` and the head code work the same for every model.
"""

from __future__ import annotations

from .registry import BackboneSpec, HeadDefaults, register


def _filters(base: list[int], depth: int | None, width: float, most: int | None = None) -> list[int]:
    """Filters per block: the classic ones, each extra block doubling the last (up to ``most``), scaled by width."""
    filters = list(base)
    while len(filters) < (depth or len(base)):
        filters.append(filters[-1] * 2 if most is None else min(filters[-1] * 2, most))
    return [max(1, round(f * width)) for f in filters[: depth or len(base)]]


def _conv_pool_net(name, input_shape, filters, kernel, pool, classic_blocks):
    """Blocks of conv(ReLU) + 2x2 pooling; the classic blocks use 'valid' padding, extra ones 'same'."""
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = inputs
    for i, f in enumerate(filters):
        padding = "valid" if i < classic_blocks else "same"
        x = layers.Conv2D(f, kernel, padding=padding, activation="relu", name=f"block{i + 1}_conv")(x)
        x = getattr(layers, pool)(2, name=f"block{i + 1}_pool")(x)
    return keras.Model(inputs, x, name=name)


def lenet5(input_shape, weights=None, width=1.0, depth=None, **_):
    """LeNet-5's feature extractor: 5x5 conv + average pooling, 6 then 16 filters."""
    return _conv_pool_net("lenet5", input_shape, _filters([6, 16], depth, width), 5, "AveragePooling2D", 2)


def smallcnn(input_shape, weights=None, width=1.0, depth=None, **_):
    """The Keras blog's cats-vs-dogs convnet: 3x3 conv + max pooling blocks of 32, 32, 64 filters."""
    return _conv_pool_net("smallcnn", input_shape, _filters([32, 32, 64], depth, width), 3, "MaxPooling2D", 3)


def _conv_bn_relu(x, filters: int, name: str, strides: int = 1):
    """3x3 conv (no bias: batch norm follows) -> fused batch norm -> ReLU, the block of smallvgg and smallresnet.

    Batch norm is the fused kernel (about 2x faster training on a CPU) with
    momentum 0.9, so its moving statistics keep up within the few hundred steps
    that a small dataset gives.
    """
    from keras import layers

    from ..layers import FusedBatchNormalization

    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = FusedBatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def smallvgg(input_shape, weights=None, width=1.0, depth=None, **_):
    """A VGG-style net with batch norm for small datasets: conv-BN-ReLU + max pooling, 32 to 256 filters.

    The first block halves the image with a stride-2 convolution instead of
    convolving at full resolution and pooling: the same weights and output size,
    about 20 % less training time on a CPU (BENCHMARKS.md), and no measurable loss
    of accuracy on cats vs dogs. Extra blocks (``depth`` > 4) keep 256 filters
    rather than doubling: a fifth block of 512 made each step 1.1-1.2 times
    longer and, on a 2-core CPU, ran about half its epochs at half speed, so
    the preset's 14 minutes held 22 epochs instead of 33-39 (83 % instead of
    85-86 % on cats vs dogs).
    """
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    first, *rest = _filters([32, 64, 128, 256], depth, width, most=256)
    x = _conv_bn_relu(inputs, first, "block1", strides=2)
    for i, f in enumerate(rest, start=2):
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(_conv_bn_relu(x, f, f"block{i}"))
    return keras.Model(inputs, x, name="smallvgg")


def smallresnet(input_shape, weights=None, width=1.0, depth=None, **_):
    """A ResNet-9-style net for small datasets: stages of conv-BN-ReLU + max pooling, 32 to 256 filters,
    with a residual pair of convolutions after every second stage.

    The residual pairs double the depth where the feature maps are small, so
    they add layers (and a receptive field that covers the image) for little
    compute; the shape follows the fast CIFAR-10 ResNet-9 (Page, 2018).
    """
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = inputs
    for i, f in enumerate(_filters([32, 64, 128, 256], depth, width)):
        x = layers.MaxPooling2D(2, name=f"stage{i + 1}_pool")(_conv_bn_relu(x, f, f"stage{i + 1}"))
        if i % 2:
            r = _conv_bn_relu(_conv_bn_relu(x, f, f"stage{i + 1}_res1"), f, f"stage{i + 1}_res2")
            x = layers.Add(name=f"stage{i + 1}_add")([x, r])
    return keras.Model(inputs, x, name="smallresnet")


register(BackboneSpec(
    name="lenet5", build=lenet5, preprocessing="unit", default_size=32, min_size=16, unfreeze="all",
    params=2872, kind="scratch", head=HeadDefaults(pooling="flatten", dense=(120, 84), dropout=0.0),
    fine_tune_epochs=0, description="LeNet-5 style, from scratch (--width, --depth)"))
register(BackboneSpec(
    name="smallcnn", build=smallcnn, preprocessing="unit", default_size=150, min_size=32, unfreeze="all",
    params=28640, kind="scratch", head=HeadDefaults(pooling="flatten", dense=(64,), dropout=0.5),
    fine_tune_epochs=0, description="Keras blog cats-vs-dogs convnet, from scratch (--width, --depth)"))
register(BackboneSpec(
    name="smallvgg", build=smallvgg, preprocessing="unit", default_size=96, min_size=32, unfreeze="all",
    params=389856, kind="scratch", head=HeadDefaults(pooling="avg", dense=(), dropout=0.3),
    fine_tune_epochs=0, description="VGG-style with batch norm, from scratch; the small-data preset's net"))
register(BackboneSpec(
    name="smallresnet", build=smallresnet, preprocessing="unit", default_size=64, min_size=32, unfreeze="all",
    params=1645792, kind="scratch", head=HeadDefaults(pooling="avg", dense=(), dropout=0.3),
    fine_tune_epochs=0, description="ResNet-9 style with batch norm, from scratch (--width, --depth)"))
