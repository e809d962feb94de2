"""--validation-freq: validation every N epochs and on each phase's last epoch, with the run folder still whole."""

import csv
import math
import os

import pytest

from conftest import make_dataset
from transfer.config import TrainConfig
from transfer.training import train


def _train(tmp_path, **overrides):
    data = make_dataset(tmp_path / "data", per_class=8, size=32)
    options = dict(data_dir=data, backbone="smallcnn", image_size=32, augment="none", batch_size=8, lr=0.01,
                   output_dir=str(tmp_path / "models"), name="run", verbose=0, monitor="val_loss", patience=1)
    return train(TrainConfig(**{**options, **overrides}))


@pytest.mark.slow
def test_validates_every_n_epochs_and_on_each_phases_last(tmp_path, recwarn):
    result = _train(tmp_path, epochs=4, fine_tune_epochs=2, validation_freq=3, restore_best=True)
    validated = [int(row["epoch"]) for row in result.history if not math.isnan(row["val_loss"])]
    assert validated == [2, 3, 5]  # the 3rd and last of phase 1 (4 epochs), the last of phase 2 (2 epochs)
    assert [row["phase"] for row in result.history] == ["head"] * 4 + ["fine_tune"] * 2  # columns line up
    assert all(row["learning_rate"] > 0 for row in result.history)
    assert result.metrics["time_limit_stopped"] == []  # no --time-limit: the epochs ran out
    with open(os.path.join(result.run_dir, "history.csv"), newline="") as f:
        assert len({len(row) for row in csv.reader(f)}) == 1
    # patience 1 counted validations, not the epochs in between: nothing stopped early
    assert result.metrics["epochs"] == {"head": 4, "fine_tune": 2}
    # the best epoch is chosen among the validated ones and its weights are the ones restored
    best = min((row for row in result.history if int(row["epoch"]) in validated), key=lambda row: row["val_loss"])
    assert result.metrics["best_epoch"] == int(best["epoch"]) + 1
    # metrics.json's loss comes from the probabilities, history's from Keras' logits: they agree to float32's
    # resolution of a probability near 1 (6e-8 per image), which is all there is of a loss this small
    assert result.metrics["val"]["loss"] == pytest.approx(best["val_loss"], rel=1e-4, abs=1e-6)
    # the monitoring callbacks were not run (and warned) on epochs without a validation metric
    assert not [w for w in recwarn if "val_loss" in str(w.message)]
    assert os.path.getsize(os.path.join(result.run_dir, "history.png")) > 0


@pytest.mark.slow
def test_default_validates_every_epoch(tmp_path):
    result = _train(tmp_path, epochs=3, fine_tune_epochs=0)
    assert all(not math.isnan(row["val_loss"]) for row in result.history)
    assert len(result.history) == 3


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _timed_steps(deadline, steps, times):
    """A _TimeLimit on a tiny model with a fake clock: the learning rate it sets at each of ``times``."""
    import keras

    from transfer.training import _TimeLimit

    clock = _Clock()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.5), loss="mse")
    timer = _TimeLimit(deadline=deadline, lr=0.5, steps=steps, clock=clock)
    timer.set_model(model)
    timer.on_train_begin()
    seen = []
    for now in times:
        clock.now = now
        timer.on_train_batch_begin(0)
        seen.append(float(model.optimizer.learning_rate))
        timer.on_train_batch_end(0)
        assert not model.stop_training
    return seen, timer, clock, model


def _cosine(*progress):
    return [0.5 * 0.5 * (1 + math.cos(math.pi * p)) for p in progress]


def test_time_limit_decays_the_learning_rate_over_the_time_and_stops_at_the_deadline():
    seen, timer, clock, model = _timed_steps(140.0, 1000, (100.0, 120.0, 130.0, 139.0))
    assert seen == pytest.approx(_cosine(0, 0.5, 0.75, 39 / 40))  # the fraction of the time gone, not of the steps
    clock.now = 140.5
    timer.on_train_batch_end(0)
    assert model.stop_training


def test_time_limit_decays_over_the_steps_when_they_run_out_first():
    seen, *_ = _timed_steps(1000.0, 4, (100.0,) * 4)  # no time passes: the steps set the pace
    assert seen == pytest.approx(_cosine(0, 0.25, 0.5, 0.75))


@pytest.mark.slow
def test_time_limit_ends_the_run_early_and_validates_its_last_epoch(tmp_path):
    result = _train(tmp_path, epochs=400, fine_tune_epochs=0, validation_freq=1000, time_limit="6s",
                    lr_schedule="cosine")
    assert len(result.history) < 400
    validated = [int(row["epoch"]) for row in result.history if not math.isnan(row["val_loss"])]
    assert validated == [int(result.history[-1]["epoch"])]  # only the epoch the limit ended
    assert result.history[-1]["learning_rate"] < 0.01 * 0.2  # the time-based cosine is near its end
    assert result.config.time_limit == "6s"
    assert result.metrics["time_limit_stopped"] == ["head"]
    elapsed = [row["elapsed_seconds"] for row in result.history]  # accuracy against time, from history.csv
    assert elapsed == sorted(elapsed) and 0 < elapsed[0] and 6 <= elapsed[-1] < 60


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("15m", 900), ("1.5h", 5400), ("120", 120), ("none", None)])
def test_durations(text, seconds):
    from transfer.config import parse_duration

    assert parse_duration(text) == seconds


def test_time_limit_gives_phase_one_its_share_of_the_time_by_epochs():
    import time

    from transfer.training.phases import deadline_of, plan

    config = TrainConfig(data_dir="x", epochs=3, fine_tune_epochs=1)
    assert [(phase.name, phase.share) for phase in plan(config, sources=None)] == [("head", 0.75), ("fine_tune", 1)]
    deadline = time.monotonic() + 100
    assert deadline_of(deadline, 0.75) - time.monotonic() == pytest.approx(75, abs=1)
    assert deadline_of(None, 0.75) is None
