"""--time-budget (the other name of --time-limit): a later phase that cannot fit is skipped, and the run says so."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from conftest import make_dataset
from test_resume import cli, history
from transfer import runs
from transfer.config import TrainConfig
from transfer.training import fasthead


@pytest.mark.slow
def test_a_tiny_budget_skips_fine_tuning_and_says_so(tmp_path):
    make_dataset(tmp_path / "colours", per_class=10)
    result = cli("train", tmp_path / "colours", "--backbone", "efficientnet_lite0", "--image-size", "32",
                 "--fine-tune-epochs", "3", "--unfreeze", "20", "--time-budget", "1s", "-o", tmp_path / "models",
                 "--name", "tiny", "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipped phase fine_tune (3 epoch(s)): no time is left" in result.stderr
    run_dir = str(tmp_path / "models" / "tiny")
    assert set(history(run_dir)[1]) == {"head"}  # phase 1 trained (at least one epoch), phase 2 none
    metrics = json.load(open(tmp_path / "models" / "tiny" / runs.METRICS_FILE))
    assert "fine_tune" in metrics["time_limit_stopped"] and metrics["epochs"]["fine_tune"] == 0


def test_the_probe_times_an_epoch_without_training():
    import tensorflow as tf

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    before = [w.copy() for w in model.get_weights()]
    data = tf.data.Dataset.from_tensor_slices((np.ones((40, 8), np.float32), np.zeros(40, np.int32))).batch(4)
    assert fasthead.probe_epoch(model, data, TrainConfig()) > 0
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
