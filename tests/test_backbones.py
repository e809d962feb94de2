"""Every registry entry, tested the moment it is registered (timm-style)."""

import keras
import numpy as np
import pytest

from transfer import backbones
from transfer.config import TrainConfig
from transfer.heads import backbone_of, build_model, unfreeze_index
from transfer.layers import Preprocess
from transfer.export.portable import all_layers, portable

ALL = backbones.names()
PRETRAINED = [n for n in ALL if backbones.get(n).pretrained]


def _resolved(name, **overrides):
    spec = backbones.get(name)
    size = max(spec.min_size, 32)
    settings = {"data_dir": "x", "backbone": name, "weights": "none", "image_size": size, "augment": "none"}
    return backbones.resolve(TrainConfig(**{**settings, **overrides}).validate())


@pytest.mark.parametrize("name", ALL)
@pytest.mark.slow
def test_entry_builds_and_classifies(name):
    spec, config = _resolved(name)
    model = build_model(spec, config, num_classes=5)
    images = np.random.default_rng(0).uniform(0, 255, (2, config.image_size, config.image_size, 3)).astype("float32")
    probabilities = model.predict_on_batch(images)
    assert probabilities.shape == (2, 5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    saved = portable(model)  # what model.keras holds: built-in layers only, the same predictions
    assert not [layer for layer in all_layers(saved) if type(layer).__module__.startswith("transfer")]
    np.testing.assert_allclose(saved.predict_on_batch(images), probabilities, atol=1e-6)
    base = backbone_of(model)
    assert base.count_params() == spec.params, "registry params out of date"
    start = unfreeze_index(base, spec.unfreeze)
    assert 0 <= start < len(base.layers)
    if spec.pretrained:
        assert start > 0, "fine-tuning a pretrained backbone by default should keep its bottom frozen"


def test_default_sizes():
    assert backbones.get("inceptionv3").default_size == 299
    assert backbones.get("xception").default_size == 299
    assert backbones.get("vgg16").default_size == 150  # the seed's size: one pass of 3000 photos fits the FLOP bound
    for name in ("resnet50", "resnet50v2", "mobilenetv2", "efficientnetb0", "densenet121"):
        assert backbones.get(name).default_size == 224
    assert (backbones.get("efficientnet_lite1").default_size, backbones.get("efficientnet_lite2").default_size) == (
        240, 260)
    # Lite0: 288 px on the image alone scored higher than 224 px with the mirror view, in less time (BENCHMARKS.md)
    lite0 = backbones.get("efficientnet_lite0")
    assert (lite0.default_size, lite0.augment) == (288, "none")
    _, config = backbones.resolve(TrainConfig(data_dir="x"))
    assert (config.backbone, config.image_size, config.augment) == ("efficientnet_lite0", 288, "none")
    _, config = backbones.resolve(TrainConfig(data_dir="x", image_size=224, augment="flip"))  # the user's still win
    assert (config.image_size, config.augment) == (224, "flip")
    assert backbones.get("efficientnet_lite0+efficientnet_lite1").augment == "none"  # one view where either has one
    assert backbones.get("efficientnet_lite1+efficientnet_lite2").augment is None  # the kind's: flip


APP_MODULES = {"inceptionv3": "inception_v3", "vgg16": "vgg16", "resnet50": "resnet50", "resnet50v2": "resnet_v2",
               "mobilenetv2": "mobilenet_v2", "efficientnetb0": "efficientnet", "xception": "xception",
               "densenet121": "densenet"}


@pytest.mark.parametrize("name", list(APP_MODULES))
def test_preprocessing_matches_keras_applications(name):
    """The in-model Preprocess layer must compute exactly what keras.applications.<m>.preprocess_input does."""
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    expected = getattr(keras.applications, APP_MODULES[name]).preprocess_input(x.copy())
    spec = backbones.get(name).keras_download or backbones.get(name)  # --weights keras: Keras' weights and scaling
    got = keras.ops.convert_to_numpy(Preprocess(spec.preprocessing)(x))
    np.testing.assert_allclose(got, np.asarray(expected), rtol=1e-5, atol=1e-4)


LITE = [n for n in PRETRAINED if n.startswith("efficientnet_lite")]


def test_every_pretrained_entry_is_checked_against_keras():
    assert set(PRETRAINED) == set(APP_MODULES) | set(LITE)
    assert LITE == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]


@pytest.mark.parametrize("name", LITE)
def test_lite_preprocessing_is_the_original_release_scaling(name):
    """EfficientNet-Lite's TensorFlow release feeds (x - 127) / 128."""
    x = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    spec = backbones.get(name).keras_download or backbones.get(name)  # --weights keras: Keras' weights and scaling
    got = keras.ops.convert_to_numpy(Preprocess(spec.preprocessing)(x))
    np.testing.assert_allclose(got, (x - 127) / 128, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("unfreeze, expect", [("all", 0), ("3", "len-3"), ("block2_conv", "index"),
                                              ("after:block1_pool", "index")])
def test_unfreeze_syntax(unfreeze, expect):
    spec, config = _resolved("smallcnn")
    base = backbone_of(build_model(spec, config, 2))
    names = [layer.name for layer in base.layers]
    want = {"len-3": len(names) - 3, "index": names.index("block2_conv")}.get(expect, expect)
    assert unfreeze_index(base, unfreeze) == want


def test_unfreeze_unknown_layer_names_close_matches():
    from transfer.errors import ConfigError

    spec, config = _resolved("smallcnn")
    base = backbone_of(build_model(spec, config, 2))
    with pytest.raises(ConfigError, match="no layer 'block9'. Similar names: block3_pool"):
        unfreeze_index(base, "block9")


def test_scratch_width_and_depth():
    spec, config = _resolved("smallcnn", width=2.0, depth=4)
    base = backbone_of(build_model(spec, config, 2))
    convs = [layer for layer in base.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [64, 64, 128, 256]


def test_smallresnet_has_a_residual_pair_after_every_second_stage():
    spec, config = _resolved("smallresnet", width=0.5, depth=4)
    base = backbone_of(build_model(spec, config, 2))
    adds = [layer for layer in base.layers if isinstance(layer, keras.layers.Add)]
    assert [a.name for a in adds] == ["stage2_add", "stage4_add"]
    convs = [layer for layer in base.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [16, 32, 32, 32, 64, 128, 128, 128]
    assert base.output_shape[1:3] == (2, 2)  # four poolings of the 32 px input


def test_smallvgg_halves_the_image_with_a_strided_first_convolution_and_keeps_256_filters_beyond_four_blocks():
    spec, config = _resolved("smallvgg", width=0.5, depth=5, image_size=80)
    base = backbone_of(build_model(spec, config, 2))
    convs = [layer for layer in base.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [(c.filters, c.strides) for c in convs] == [(16, (2, 2))] + [(f, (1, 1)) for f in (32, 64, 128, 128)]
    assert "block1_pool" not in [layer.name for layer in base.layers]
    assert base.get_layer("block1_relu").output.shape[1:3] == (40, 40)
    assert base.output_shape[1:3] == (2, 2)  # the stride, then four poolings of the 80 px input


def test_resolve_fills_backbone_defaults():
    spec, config = backbones.resolve(TrainConfig(data_dir="x", backbone="ResNet50"))
    assert (config.backbone, config.weights, config.image_size, config.unfreeze) == (
        "resnet50", "imagenet", 224, "after:conv4_block6_out")
    assert config.fine_tune_epochs > 0 and config.pooling == "avg"
    spec, config = backbones.resolve(TrainConfig(data_dir="x", backbone="smallcnn"))
    assert (config.weights, config.fine_tune_epochs, config.pooling, config.dense) == ("none", 0, "flatten", (64,))


def test_too_deep_for_the_image_size_is_a_clear_error():
    from transfer.errors import ConfigError

    spec, config = _resolved("lenet5", depth=6)
    with pytest.raises(ConfigError, match="too small for lenet5"):
        build_model(spec, config, 2)


def test_a_pair_concatenates_both_maps_and_fine_tuning_it_keeps_every_batch_norm_frozen():
    from transfer.heads import unfreeze_top

    spec, config = _resolved("efficientnet_lite0+efficientnet_lite1", image_size=64)
    assert (spec.default_size, spec.preprocessing, config.fine_tune) == (288, "lite", "off")  # the larger member's
    model = build_model(spec, config, 3)
    base = backbone_of(model)
    assert base.output_shape == (None, 2, 2, 2560) and base.count_params() == spec.params
    assert unfreeze_top(model, "all") == 2  # both members train
    inner = [layer for member in base.layers[1:3] for layer in member.layers]
    assert any(layer.trainable for layer in inner if isinstance(layer, keras.layers.Conv2D))
    assert not any(layer.trainable for layer in inner if isinstance(layer, keras.layers.BatchNormalization))
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    saved = portable(model)  # what model.keras holds: built-in layers only, the same predictions
    assert not [layer for layer in all_layers(saved) if type(layer).__module__.startswith("transfer")]
    np.testing.assert_allclose(saved.predict_on_batch(images), model.predict_on_batch(images), atol=1e-6)


@pytest.mark.parametrize("name, message", [
    ("efficientnet_lite0+efficientnet_lite0", "both are efficientnet_lite0"),
    ("efficientnet_lite0+inceptionv3", "their preprocessing differs (lite, inception)"),
    ("efficientnet_lite0+smallcnn", "only pretrained registry entries pair"),
    ("efficientnet_lite0+efficientnet_lite1+efficientnet_lite2", "a pair is two backbone names joined by '+'"),
    ("efficientnet_lite0+nope", "unknown backbone 'nope'"),
])
def test_what_cannot_pair_is_one_clear_error(runner, colours_dir, tmp_path, name, message):
    from cli import main

    result = runner.invoke(main, ["train", colours_dir, "-o", str(tmp_path / "m"), "--backbone", name])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and message in result.output, result.output
