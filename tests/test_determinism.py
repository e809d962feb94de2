"""--seed with --deterministic: the same seed, data and options give the same weights and metrics; another seed
gives other weights. Each run is its own process (determinism, once on, stays on for a process)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_dataset
from transfer import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMINGS = {"seconds", "train_seconds"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three runs at once, on the same data: seed 1 twice and seed 2, with augmentation and both phases."""
    root = tmp_path_factory.mktemp("determinism")
    data = make_dataset(root / "colours", per_class=12)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    procs = {name: subprocess.Popen(
        [sys.executable, "-m", "cli", "train", data, "--backbone", "smallcnn", "--image-size", "32", "--epochs", "3",
         "--fine-tune-epochs", "1", "--augment", "light", "--batch-size", "8", "--seed", str(seed), "--deterministic",
         "-o", str(root / "models"), "--name", name, "--cache-dir", str(root / "cache"), "-q"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, seed in (("a", 1), ("b", 1), ("c", 2))}
    for proc in procs.values():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    return {name: str(root / "models" / name) for name in procs}


def weights(run_dir):
    import keras

    import transfer.layers  # noqa: F401  (registers the model's own layers)

    return keras.saving.load_model(os.path.join(run_dir, runs.MODEL_FILE)).get_weights()


def metrics(run_dir):
    with open(os.path.join(run_dir, runs.METRICS_FILE)) as f:
        return {k: v for k, v in json.load(f).items() if k not in TIMINGS}


def losses(run_dir):
    with open(os.path.join(run_dir, runs.HISTORY_FILE), newline="") as f:
        return [{k: v for k, v in row.items() if k != "elapsed_seconds"} for row in csv.DictReader(f)]


def test_the_same_seed_gives_the_same_weights_and_metrics(trained):
    a, b = weights(trained["a"]), weights(trained["b"])
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert metrics(trained["a"]) == metrics(trained["b"])
    assert losses(trained["a"]) == losses(trained["b"])
    config = json.load(open(os.path.join(trained["a"], runs.CONFIG_FILE)))["config"]
    assert config["deterministic"] is True and config["seed"] == 1


def test_another_seed_gives_other_weights(trained):
    a, c = weights(trained["a"]), weights(trained["c"])
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
