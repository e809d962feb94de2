"""Feature caching: the same model as training through the frozen backbone, computed once, reused, invalidated."""

import logging
import os

import numpy as np
import pytest

from conftest import make_dataset, write_image
from transfer import backbones, data, features
from transfer.config import TrainConfig
from transfer.errors import ConfigError
from transfer.heads import build_model
from transfer.data.images import load_image
from transfer.training import train

SIZE = 48


def _config(tmp_path, **overrides):
    options = dict(data_dir=str(tmp_path / "data"), backbone="mobilenetv2", weights="none", image_size=SIZE,
                   augment="none", batch_size=5, output_dir=str(tmp_path / "models"), verbose=0, restore_best=False,
                   lr=0.05, epochs=3, fine_tune_epochs=0, cache_dir=str(tmp_path / "cache"), seed=7,
                   head_fit="keras")  # fit on cached features = fit on images; the compiled epochs: test_fast_head.py
    options.update(overrides)
    return TrainConfig(**options)


def _pixels(folder, size):
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(folder) for f in files)
    return np.stack([load_image(p, (size, size), "squash") for p in paths]).astype(np.float32)


def _trained_base(tmp_path, trained_run, **overrides):
    """A frozen backbone whose features tell the colours apart (a random MobileNetV2's barely vary)."""
    make_dataset(tmp_path / "data", per_class=6, size=32)
    return _config(tmp_path, backbone=trained_run["run"], weights=None, image_size=None, **overrides)


@pytest.mark.parametrize("fine_tune_epochs, unfreeze, caches, cache_memory", [
    (0, None, 1, "25%"),
    (1, "all", 1, "25%"),  # phase 2 on the images: nothing of the backbone stays frozen
    (1, "after:block2_pool", 2, "25%"),  # phase 2 on the activations after block 2 (boundary caching)
    (1, "after:block2_pool", 2, "1K"),  # both phases streamed from the cache folder (spilled)
])
def test_cached_and_uncached_training_give_the_same_model(tmp_path, trained_run, caplog, fine_tune_epochs, unfreeze,
                                                          caches, cache_memory):
    import keras

    options = dict(fine_tune_epochs=fine_tune_epochs, fine_tune_optimizer="adam", fine_tune_lr=0.01, unfreeze=unfreeze)
    with caplog.at_level(logging.INFO, logger="transfer"):
        cached = train(_trained_base(tmp_path, trained_run, name="cached", cache_features="on",
                                     cache_memory=cache_memory, **options))
    assert len([r for r in caplog.records if r.getMessage().startswith("feature cache ")]) == caches
    spilled = [r.getMessage() for r in caplog.records if "over --cache-memory 1K: streaming them from" in r.getMessage()]
    assert len(spilled) == (caches if cache_memory == "1K" else 0)
    plain = train(_trained_base(tmp_path, trained_run, name="plain", cache_features="off", **options))
    images = _pixels(tmp_path / "data", 32)
    expected = plain.model.predict(images, verbose=0)
    assert np.ptp(expected, axis=0).max() > 1e-3, "the head learned nothing: the comparison would prove nothing"
    np.testing.assert_allclose(cached.model.predict(images, verbose=0), expected, atol=1e-5)
    assert len(cached.history) == len(plain.history) == 3 + fine_tune_epochs
    for mine, theirs in zip(cached.history, plain.history):
        assert mine["phase"] == theirs["phase"]
        assert mine["loss"] == pytest.approx(theirs["loss"], abs=1e-5)
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], abs=1e-5)
    assert cached.metrics["val"]["loss"] == pytest.approx(plain.metrics["val"]["loss"], abs=1e-5)
    # the run's report predicts through the cached features too (without fine-tuning): the same numbers
    assert cached.metrics["val"]["log_loss"] == pytest.approx(plain.metrics["val"]["log_loss"], abs=1e-5)
    assert cached.metrics["val"]["confusion_matrix"] == plain.metrics["val"]["confusion_matrix"]
    if fine_tune_epochs:  # phase 2 really trained the backbone's top, so the comparison covers it
        source = keras.saving.load_model(os.path.join(trained_run["run"], "model.keras")).get_layer("backbone")
        top = cached.model.get_layer("backbone").get_layer("block3_conv")
        assert not np.allclose(top.get_weights()[0], source.get_layer("block3_conv").get_weights()[0], atol=1e-3)
    saved = keras.saving.load_model(os.path.join(cached.run_dir, "model.keras"))
    assert [layer.name for layer in saved.layers] == [layer.name for layer in plain.model.layers]
    np.testing.assert_allclose(saved.predict(images, verbose=0), expected, atol=1e-5)


def test_the_best_epoch_is_restored_into_the_full_model(tmp_path, trained_run):
    options = dict(restore_best=True, lr=0.5, epochs=4)
    cached = train(_trained_base(tmp_path, trained_run, name="cached", cache_features="on", **options))
    plain = train(_trained_base(tmp_path, trained_run, name="plain", cache_features="off", **options))
    assert cached.metrics["best_epoch"] == plain.metrics["best_epoch"]
    images = _pixels(tmp_path / "data", 32)
    np.testing.assert_allclose(cached.model.predict(images, verbose=0), plain.model.predict(images, verbose=0),
                               atol=1e-5)


def _cache_run(config, caplog):
    """Train once; return (from the cache, computed) as logged."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transfer"):
        train(config)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("feature cache ")]
    hits, computed = line.split(": ")[1].split(" image(s) from the cache, ")
    return int(hits), int(computed.split()[0])


def test_the_cache_is_reused_by_the_next_run_and_invalidated_by_a_changed_image(tmp_path, trained_run, caplog):
    config = _trained_base(tmp_path, trained_run, name="run", overwrite=True, epochs=1)
    assert _cache_run(config, caplog) == (0, 18)
    assert _cache_run(config, caplog) == (18, 0)
    write_image(str(tmp_path / "data" / "red" / "001.png"), (250, 10, 10), 32, seed=99)
    assert _cache_run(config, caplog) == (17, 1)


@pytest.mark.slow
def test_the_cache_key_changes_with_backbone_weights_size_and_resize(tmp_path):
    import keras

    def key(**overrides):
        spec, config = backbones.resolve(_config(tmp_path, **overrides))
        keras.utils.set_random_seed(config.seed)
        return features.model_key(build_model(spec, config, 3), config)

    base = key()
    assert key() == base  # the same settings and seed build the same weights: the cache is reused
    others = [key(seed=8), key(image_size=SIZE + 16), key(resize="crop"), key(backbone="efficientnetb0"),
              key(pooling="max")]
    assert len({base, *others}) == 1 + len(others)


@pytest.mark.slow
def test_cache_files_are_complete_and_no_temporary_file_is_left(tmp_path):
    import keras

    make_dataset(tmp_path / "data", per_class=3, size=SIZE)
    config = _config(tmp_path)
    spec, config = backbones.resolve(config)
    dataset = data.scan(config.data_dir, cache_dir=config.cache_dir)
    digests = {c.path: c.digest for c in dataset.report.used}

    def fresh_cache():
        keras.utils.set_random_seed(config.seed)
        return features.frozen_phase_cache(build_model(spec, config, 3), config, digests)

    first = fresh_cache()
    rows = first.features(dataset.splits["train"])
    files = sorted(os.listdir(first.folder))
    assert len(files) == len(rows) == first.computed and all(f.endswith(".npy") for f in files)
    second = fresh_cache()
    np.testing.assert_array_equal(second.features(dataset.splits["train"]), rows)
    assert (second.hits, second.computed) == (len(rows), 0)


def test_auto_is_off_with_augmentation_and_says_why(tmp_path, trained_run, caplog):
    with caplog.at_level(logging.INFO, logger="transfer"):
        train(_trained_base(tmp_path, trained_run, name="run", epochs=1, augment="light"))
    messages = [r.getMessage() for r in caplog.records]
    assert ("feature caching is off: --augment light changes every image in every epoch (--augment flip is cached)"
            in messages)
    assert not any(m.startswith("feature cache ") for m in messages)
    assert not (tmp_path / "cache" / "features").exists()


@pytest.mark.parametrize("overrides, fragment", [
    ({"augment": "light"}, "--augment light"),
    ({"backbone": "smallcnn", "image_size": 32}, "smallcnn is trained from scratch"),
])
def test_cache_on_refuses_what_it_cannot_cache(tmp_path, overrides, fragment):
    make_dataset(tmp_path / "data", per_class=3, size=SIZE)
    with pytest.raises(ConfigError, match="--cache-features on cannot apply") as error:
        train(_config(tmp_path, name="run", cache_features="on", **overrides))
    assert fragment in str(error.value)
    assert not (tmp_path / "models").exists() or not os.listdir(tmp_path / "models")


def test_bad_cache_mode_names_the_option():
    with pytest.raises(ConfigError, match="--cache-features must be one of auto, on, off"):
        TrainConfig(data_dir="x", cache_features="yes").validate()


def test_a_cache_that_cannot_be_written_only_costs_time(tmp_path, trained_run, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would go")
    with caplog.at_level(logging.WARNING, logger="transfer"):
        result = train(_trained_base(tmp_path, trained_run, name="run", cache_dir=str(blocker)))
    warnings = [r.getMessage() for r in caplog.records if "could not write the feature cache" in r.getMessage()]
    assert len(warnings) == 1 and "features are kept in memory only" in warnings[0]
    assert result.metrics["epochs"]["head"] == 3


def test_spilled_features_are_streamed_from_disk_not_held_in_ram(tmp_path, trained_run, monkeypatch):
    import keras

    config = _trained_base(tmp_path, trained_run, cache_memory="1K", unfreeze="after:block2_pool")
    spec, config = backbones.resolve(config)
    dataset = data.scan(config.data_dir, cache_dir=config.cache_dir)
    keras.utils.set_random_seed(config.seed)
    model = build_model(spec, config, 3)
    cache = features.boundary_cache(model, config, config.unfreeze, {c.path: c.digest for c in dataset.report.used})
    examples = dataset.splits["train"]
    assert cache.prepare(examples) and cache.in_memory is False and not cache._rows
    batches = list(cache.dataset(examples).as_numpy_iterator())
    streamed = np.concatenate([x for x, _ in batches])
    assert len(os.listdir(cache.folder)) == len(examples) == len(streamed)
    np.testing.assert_allclose(streamed, cache.extractor.predict(_stack(examples, config), verbose=0),
                               atol=1e-5)


def _stack(examples, config):
    return np.stack([load_image(e.path, (config.image_size,) * 2, "squash") for e in examples]).astype(np.float32)


def test_over_the_memory_budget_with_no_writable_cache_training_runs_on_images(tmp_path, trained_run, caplog):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder would go")
    with caplog.at_level(logging.INFO, logger="transfer"):
        result = train(_trained_base(tmp_path, trained_run, name="run", fine_tune_epochs=1, cache_memory="1K",
                                     unfreeze="after:block2_pool", cache_dir=str(blocker)))
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith("cached features fit neither --cache-memory")]) == 2
    assert not any(m.startswith("feature cache ") for m in messages)
    assert result.metrics["epochs"] == {"head": 3, "fine_tune": 1}
    assert 0 <= result.metrics["val"]["accuracy"] <= 1


@pytest.mark.parametrize("value", ["lots", "-1G", "150%", "4X"])
def test_bad_cache_memory_names_the_option(value):
    with pytest.raises(ConfigError, match="--cache-memory"):
        TrainConfig(data_dir="x", cache_memory=value).validate()


def test_cache_memory_sizes():
    from transfer.config import parse_memory

    assert parse_memory("4G") == 4 << 30
    assert parse_memory("512m") == 512 << 20
    assert parse_memory("1.5GB") == 3 << 29
    assert parse_memory("25%", total=1000) == 250


@pytest.mark.slow
def test_boundary_caching_needs_a_clean_cut(tmp_path, caplog):
    import dataclasses

    import keras

    spec, config = backbones.resolve(_config(tmp_path))
    keras.utils.set_random_seed(config.seed)
    model = build_model(spec, config, 3)
    # block_14_add also reads block_13's output, from before this boundary
    inside_a_residual_block = dataclasses.replace(config, unfreeze="block_14_expand_BN")
    with caplog.at_level(logging.INFO, logger="transfer"):
        assert features.boundary_cache(model, inside_a_residual_block, inside_a_residual_block.unfreeze, {}) is None
    assert "boundary caching is off: the backbone cannot be cut cleanly after block_14_expand" in caplog.messages
    # the registry's after:block_12_add is clean
    assert features.boundary_cache(model, config, config.unfreeze, {}) is not None


def test_flip_and_tta_are_cached_as_two_views_that_reproduce_the_image_model(tmp_path, trained_run):
    """--augment flip --tta: phase 1 caches each image's and its mirror image's features; the head, averaged over
    the two views, is exactly the full model with test-time mirroring on the images."""
    config = _trained_base(tmp_path, trained_run, name="flip", augment="flip", tta=True, epochs=4, lr=0.05)
    result = train(config)
    resolved = result.config
    dataset = data.scan(resolved.data_dir, cache_dir=resolved.cache_dir)
    cache = features.frozen_phase_cache(result.model, resolved, {c.path: c.digest for c in dataset.report.used})
    examples = dataset.splits["val"]
    rows = cache.features(examples)
    assert cache.computed == 0 and rows.shape[1] == 2  # both views, read back from the run's cache
    images = np.stack([load_image(e.path, (32, 32)) for e in examples]).astype(np.float32)
    mirrored = cache.extractor.predict(images[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(rows[:, 1], mirrored, rtol=1e-4, atol=1e-4)
    on_features = cache.top.predict(rows, verbose=0)
    np.testing.assert_allclose(on_features, result.model.predict(images, verbose=0), atol=1e-5)
    assert result.metrics["val"]["accuracy"] == pytest.approx(
        float(np.mean(on_features.argmax(1) == [e.label for e in examples])))
    assert np.abs(rows[0, 0] - rows[0, 1]).max() > 1e-4
    epochs = cache.dataset(examples[:1], shuffle=True, seed=3, pick="random")
    mirror = [np.abs(x[0, 0] - rows[0, 1]).max() < np.abs(x[0, 0] - rows[0, 0]).max()
              for _ in range(40) for x, _ in epochs.as_numpy_iterator()]
    assert 5 < sum(mirror) < 35  # the mirror view is drawn about half the time, anew each epoch


@pytest.mark.parametrize("mode, passes, converted", [("auto", features.TFLITE_MIN_PASSES - 1, False),
                                                      ("auto", features.TFLITE_MIN_PASSES, True),
                                                      ("tflite", 1, True), ("keras", 10**6, False)])
def test_auto_converts_to_tflite_only_where_the_conversion_pays(mode, passes, converted):
    """A few hundred images cost less with Keras than converting the backbone; --feature-engine tflite insists."""
    import types

    import keras

    inputs = keras.Input((8, 8, 3))
    tiny = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs)))
    cache = types.SimpleNamespace(_run=None, config=types.SimpleNamespace(feature_engine=mode), extractor=tiny)
    engine = features.FeatureCache._engine(cache, passes)
    assert (engine.runner is not None) is converted
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(engine(images), tiny.predict_on_batch(images), rtol=1e-4, atol=1e-4)
