"""Phase 1 in compiled epochs on cached features (transfer/training/fasthead.py): it converges, it finds what
Keras' fit finds, and the run around it (history, checkpoint, backup, --resume, export) is the one fit makes."""

from __future__ import annotations

import glob
import json
import os
import signal

import keras
import numpy as np
import pytest

from conftest import make_dataset
from test_resume import assert_finished, cli, history, start, stop_after_backup
from transfer import predict, runs
from transfer.config import FAST_EPOCHS, TrainConfig
from transfer.features import head_top
from transfer.heads import build_head
from transfer.training import fasthead

LITE = ["--backbone", "efficientnet_lite0", "--image-size", "32", "--batch-size", "4"]


def top_of(features: int, classes: int, **options) -> keras.Model:
    """The run's head on ``features``-long pooled vectors, after its pooling (as phase 1 trains it)."""
    config = TrainConfig(pooling="avg", dense=(), dropout=0.2, **options)
    inputs = keras.Input((1, 1, features))
    holder = keras.Model(inputs, build_head((1, 1, features), classes, config)(inputs))
    top = head_top(holder)
    top.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return top


def gaussians(n: int, means: np.ndarray, spread: float, seed: int, views: int = 2):
    """Rows of (views, features) around each class's mean, and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(means), n).astype(np.int32)
    rows = means[labels][:, None] + rng.normal(0, spread, (n, views, means.shape[1]))
    return rows.astype(np.float32), labels


def fit_fast(top: keras.Model, arrays: fasthead.Arrays, epochs: int = FAST_EPOCHS, patience: int = 10):
    """What the runner does with a phase: compiled epochs until --patience says stop, ending on the best one."""
    fit = fasthead.EpochFit(top, arrays, batch_size=32, seed=1, random_view=True)
    watch = fasthead.Watch("val_loss", patience, 1e-3)
    for epoch in range(epochs):
        top.optimizer.learning_rate = watch.lr(epoch)
        logs = fit(epoch)
        watch.epoch_end(epoch, logs, top)
        if watch.stopped:
            break
    top.set_weights(watch.best_weights)
    return logs, watch


def accuracy(top: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(top.predict(x, verbose=0), axis=-1) == y))


@pytest.mark.slow
def test_the_compiled_head_reaches_100_percent_on_separable_features():
    means = np.random.default_rng(2).normal(0, 1, (4, 96)).astype(np.float32)  # ~14 apart, spread over every feature
    train_x, train_y = gaussians(400, means, 0.5, seed=0)
    val_x, val_y = gaussians(200, means, 0.5, seed=1)
    top = top_of(96, 4)
    logs, watch = fit_fast(top, fasthead.Arrays(train_x, train_y, val_x[:, :1], val_y))
    assert accuracy(top, train_x[:, :1], train_y) == 1.0 and accuracy(top, val_x[:, :1], val_y) == 1.0
    assert watch.best_epoch >= 0 and logs["accuracy"] == 1.0


@pytest.mark.slow
def test_the_compiled_head_finds_what_keras_fit_finds_on_overlapping_classes():
    """Classes that overlap, with a known best accuracy (the nearest mean, as the spread is the same in every
    direction): Keras' fit and the compiled epochs both come within noise of it, and of each other."""
    rng = np.random.default_rng(3)
    means = rng.normal(0, 1, (5, 64)).astype(np.float32) * 0.25
    train_x, train_y = gaussians(1500, means, 1.0, seed=4)
    val_x, val_y = gaussians(3000, means, 1.0, seed=5, views=1)
    nearest = np.argmin(((val_x[:, 0, None] - means[None]) ** 2).sum(-1), axis=1)
    optimum = float(np.mean(nearest == val_y))
    assert 0.6 < optimum < 0.95  # neither trivial nor hopeless

    keras.utils.set_random_seed(0)
    by_fit = top_of(64, 5)
    by_fit.fit(train_x[:, :1], train_y, batch_size=32, epochs=30, verbose=0, shuffle=True)
    keras.utils.set_random_seed(0)
    by_epochs = top_of(64, 5)
    fit_fast(by_epochs, fasthead.Arrays(train_x, train_y, val_x[:1000], val_y[:1000]))
    fitted, compiled = accuracy(by_fit, val_x[1000:], val_y[1000:]), accuracy(by_epochs, val_x[1000:], val_y[1000:])
    assert abs(fitted - compiled) <= 0.03, (fitted, compiled, optimum)
    assert compiled >= optimum - 0.04, (compiled, optimum)


@pytest.mark.slow
def test_one_compiled_epoch_fits_every_fold_as_fresh_heads_do():
    """--backbone auto's folds: restarted on other rows (of another count), the one traced epoch gives what a fresh
    head and a fresh trace give, dropout, optimizer state, class weights and all; and it traces only once."""
    from transfer.training.auto import _fit_heads

    means = np.random.default_rng(6).normal(0, 1, (3, 16)).astype(np.float32) * 0.6
    x, y = gaussians(90, means, 1.0, seed=7)
    folds = [np.arange(0, 17), np.arange(17, 40), np.arange(40, 90, 3)]
    config = TrainConfig(data_dir="x", pooling="avg", dense=(), dropout=0.3, epochs=25, patience=25, lr=0.01,
                         augment="flip")
    top = top_of(16, 3)
    together = _fit_heads(top, x, y, folds, config, {0: 2.0, 1: 0.5})
    alone = [_fit_heads(top, x, y, [fold], config, {0: 2.0, 1: 0.5})[0] for fold in folds]
    assert len(set(together)) == 3  # the folds differ, so a fit that ignored its rows would show here
    np.testing.assert_allclose(together, alone, rtol=1e-6)
    fit = fasthead.EpochFit(top_of(16, 3), fasthead.Arrays(x[:50], y[:50], x[50:, :1], y[50:]), 8, 1, True)
    fit(0)
    fit.restart(fasthead.Arrays(x[:70], y[:70], x[70:, :1], y[70:]))
    fit(0)
    assert fit._epoch.experimental_get_tracing_count() == 1


def test_watch_stops_after_patience_and_lowers_the_rate_on_a_plateau():
    watch = fasthead.Watch("val_accuracy", patience=4, lr=1e-3)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    for epoch, value in enumerate([0.5, 0.7, 0.7, 0.6, 0.7]):
        watch.epoch_end(epoch, {"val_accuracy": value}, model)
    assert watch.best == 0.7 and watch.best_epoch == 1 and watch.wait == 3 and not watch.stopped
    assert watch.rate == pytest.approx(1e-3 * 0.2)  # patience // 2 = 2 epochs without a gain
    watch.epoch_end(5, {"val_accuracy": 0.69}, model)
    assert watch.stopped
    assert fasthead.Watch("val_loss", 5, 1.0, cosine_epochs=10).lr(5) == pytest.approx(0.5)


def test_step_size_keeps_the_batch_size_until_an_epoch_would_take_too_many_steps():
    assert fasthead.step_size(32, 100) == 32
    assert fasthead.step_size(32, 32 * fasthead.MAX_STEPS * 2) == 64


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast_head")
    make_dataset(root / "colours", per_class=20)
    return root


@pytest.mark.slow
def test_a_run_on_cached_features_converges_in_compiled_epochs_and_predicts(root):
    """The default run on a pretrained backbone: at most FAST_EPOCHS epochs, stopped by validation, each in
    history.csv (every one validated, whatever --validation-freq says, and the run says so); config.json records
    the maximum; the run's model is saved and predicts. (Its exports: test_tflite_export.py and
    test_efficientnet_lite.py export runs of the same kind.)"""
    result = cli("train", root / "colours", *LITE, "-o", root / "models", "--name", "fast", "--cache-dir",
                 root / "cache", "--validation-freq", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--validation-freq 2: phase head validates every epoch all the same" in result.stderr  # said, not ignored
    run_dir = str(root / "models" / "fast")
    config = json.load(open(os.path.join(run_dir, runs.CONFIG_FILE)))["config"]
    assert config["epochs"] == FAST_EPOCHS and config["head_fit"] == "auto"
    assert "phase head:" in result.stderr and "best epoch" in result.stderr
    epochs, phases = history(run_dir)
    assert epochs == list(range(len(epochs))) and set(phases) == {"head"} and len(epochs) <= FAST_EPOCHS
    metrics = json.load(open(os.path.join(run_dir, runs.METRICS_FILE)))
    assert metrics["val"]["accuracy"] == 1.0 and metrics["epochs"]["head"] == len(epochs)
    images = sorted(glob.glob(str(root / "colours" / "*" / "000.png")))
    labels = [p.label for p in predict(run_dir, images).predictions]  # the saved model, as predict loads it
    assert labels == [os.path.basename(os.path.dirname(i)) for i in images]


@pytest.mark.slow
def test_head_fit_keras_keeps_ten_epochs_of_fit(root):
    result = cli("train", root / "colours", *LITE, "--head-fit", "keras", "-o", root / "models", "--name", "keras",
                 "--cache-dir", root / "cache", "--patience", "100", "--fine-tune", "off")  # phase 1 is the point
    assert result.returncode == 0, result.stderr[-3000:]
    assert "phase head:" not in result.stderr and "epoch 10/10 (head)" in result.stderr
    assert json.load(open(root / "models" / "keras" / runs.CONFIG_FILE))["config"]["epochs"] == 10


@pytest.mark.slow
def test_a_kill_after_the_compiled_phase_resumes_in_fine_tuning(root):
    """Phase 1 is backed up once, at its end; a kill in phase 2 resumes there, every epoch once."""
    args = ["train", root / "colours", *LITE, "--epochs", "6", "--patience", "100", "--fine-tune-epochs", "3",
            "--unfreeze", "20", "-o", root / "models", "--name", "killed", "--cache-dir", root / "cache"]
    status, _ = stop_after_backup(start(*args), root / "models" / "killed.partial", 7, signal.SIGKILL)
    assert status == -signal.SIGKILL
    resumed = cli(*args[:2], "-o", root / "models", "--name", "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed at epoch 8 (phase fine_tune)" in resumed.stderr
    assert_finished(str(root / "models" / "killed"), ["head"] * 6 + ["fine_tune"] * 3)
