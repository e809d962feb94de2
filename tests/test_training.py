"""The two-phase schedule really freezes what it says, and --weights loads what it says."""

import socket

import numpy as np
import pytest

from cli import main
from conftest import make_dataset
from transfer import backbones
from transfer.config import TrainConfig
from transfer.errors import WeightsError
from transfer.heads import backbone_of, unfreeze_index
from transfer.training import train

SIZE = 64


@pytest.fixture(scope="module")
def base_weights(tmp_path_factory):
    """A MobileNetV2 base saved by the test itself (no pretrained weights exist offline)."""
    import keras

    keras.utils.set_random_seed(123)
    spec, config = backbones.resolve(TrainConfig(data_dir="x", backbone="mobilenetv2", weights="none", image_size=SIZE))
    base = backbones.build_backbone(spec, config)
    path = str(tmp_path_factory.mktemp("weights") / "mobilenetv2_notop.weights.h5")
    base.save_weights(path)
    return path, [w.copy() for w in base.get_weights()], base


def _train(tmp_path, weights, **overrides):
    data = make_dataset(tmp_path / "data", per_class=6, size=SIZE)
    options = dict(data_dir=data, backbone="mobilenetv2", weights=weights, image_size=SIZE, augment="none",
                   batch_size=6, output_dir=str(tmp_path / "models"), name="run", verbose=0, restore_best=False,
                   lr=0.01, fine_tune_lr=0.05)
    options.update(overrides)
    return train(TrainConfig(**options))


@pytest.mark.slow
def test_weights_path_loads_the_file_and_phase1_never_changes_the_backbone(tmp_path, base_weights):
    path, saved, _ = base_weights
    result = _train(tmp_path, path, epochs=2, fine_tune_epochs=0)
    trained = backbone_of(result.model).get_weights()
    assert len(trained) == len(saved)
    for before, after in zip(saved, trained):
        np.testing.assert_array_equal(before, after)
    head_kernel = result.model.get_layer("head").get_layer("probabilities").get_weights()[0]
    assert np.abs(head_kernel).sum() > 0


@pytest.mark.slow
def test_phase2_trains_only_the_unfrozen_top_and_keeps_batchnorm_statistics(tmp_path, base_weights):
    import keras

    path, _, reference = base_weights
    result = _train(tmp_path, path, epochs=1, fine_tune_epochs=2)
    base = backbone_of(result.model)
    start = unfreeze_index(base, backbones.get("mobilenetv2").unfreeze)
    changed = []
    for i, (layer, ref) in enumerate(zip(base.layers, reference.layers)):
        assert layer.name == ref.name or not layer.weights
        for w, r in zip(layer.get_weights(), ref.get_weights()):
            if i < start or isinstance(layer, keras.layers.BatchNormalization):
                np.testing.assert_array_equal(w, r, err_msg=f"{layer.name} changed but is frozen")
            elif not np.array_equal(w, r):
                changed.append(layer.name)
    assert changed, "fine-tuning changed no unfrozen layer"
    assert result.metrics["epochs"] == {"head": 1, "fine_tune": 2}


@pytest.mark.slow
def test_scratch_nets_train_their_base_in_phase1(tmp_path):
    import keras

    keras.utils.set_random_seed(42)
    result = _train(tmp_path, None, backbone="smallcnn", epochs=2, fine_tune_epochs=0, image_size=32)
    keras.utils.set_random_seed(42)
    spec, config = backbones.resolve(TrainConfig(data_dir="x", backbone="smallcnn", image_size=32))
    fresh = backbones.build_backbone(spec, config)
    assert any(not np.array_equal(a, b) for a, b in zip(fresh.get_weights(), backbone_of(result.model).get_weights()))


@pytest.mark.slow
def test_weight_decay_reaches_the_optimizer_and_shrinks_the_weights(tmp_path):
    import keras

    norms = {}
    for decay in (None, 2.0):
        keras.utils.set_random_seed(42)
        result = _train(tmp_path / str(decay), None, backbone="smallcnn", epochs=2, fine_tune_epochs=0,
                        image_size=32, optimizer="adam", weight_decay=decay)
        assert result.model.optimizer.weight_decay == decay
        assert result.config.weight_decay == decay
        kernel = backbone_of(result.model).get_layer("block1_conv").get_weights()[0]
        norms[decay] = float(np.linalg.norm(kernel))
    assert norms[2.0] < 0.9 * norms[None]


@pytest.mark.slow
def test_weights_file_of_another_architecture_is_refused(tmp_path, base_weights):
    path, _, _ = base_weights
    with pytest.raises(WeightsError, match="does not fit efficientnetb0"):
        _train(tmp_path, path, backbone="efficientnetb0", epochs=1, fine_tune_epochs=0)
    assert not (tmp_path / "models" / "run").exists()


def test_offline_imagenet_stops_before_training_with_instructions(tmp_path, runner, monkeypatch):
    def no_network(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    data = make_dataset(tmp_path / "data", per_class=3)
    result = runner.invoke(main, ["train", data, "--backbone", "resnet50", "-o", str(tmp_path / "models")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: could not download the ImageNet weights for resnet50")
    assert "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5" in message
    assert str(tmp_path) in message or "keras_home" in message  # the KERAS_HOME the test set
    assert "--weights PATH" in message and "--weights none" in message
    assert not list((tmp_path / "models").glob("*")) if (tmp_path / "models").exists() else True


def test_a_file_named_like_the_keras_download_must_match_its_checksum(tmp_path):
    fake = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    fake.write_bytes(b"not the real weights")
    with pytest.raises(WeightsError, match="does not match the published checksum"):
        _train(tmp_path, str(fake), backbone="resnet50", image_size=32, epochs=1, fine_tune_epochs=0)


@pytest.mark.slow
def test_legacy_h5_weights_file_like_the_keras_downloads(tmp_path, base_weights):
    """Keras' ImageNet files are legacy .h5 (not .weights.h5): that format must load too."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    _, saved, base = base_weights
    path = str(tmp_path / "mobilenetv2_notop.h5")
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)
    result = _train(tmp_path, path, epochs=1, fine_tune_epochs=0)
    for before, after in zip(saved, backbone_of(result.model).get_weights()):
        np.testing.assert_array_equal(before, after)


@pytest.mark.slow
def test_label_smoothing_trains_with_the_smoothed_loss_and_the_run_reloads(tmp_path):
    from transfer.layers import SparseSmoothedCrossentropy
    from transfer.runners import load_model

    result = _train(tmp_path, None, backbone="smallcnn", epochs=2, fine_tune_epochs=0, image_size=32,
                    label_smoothing=0.2)
    assert isinstance(result.model.loss, SparseSmoothedCrossentropy) and result.model.loss.label_smoothing == 0.2
    assert result.config.label_smoothing == 0.2
    # smoothed targets have entropy > 0.48 for 3 classes at s = 0.2: no epoch's loss can go below it
    assert min(row["loss"] for row in result.history) > 0.48
    assert not load_model(result.run_dir).keras_model.compiled  # saved uncompiled: the custom loss stays in training
