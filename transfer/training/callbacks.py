"""The Keras callbacks that every phase runs: validation, the time limit, history.csv, NaN, the best checkpoint, and
the stop after the batch during which Ctrl-C or SIGTERM came."""

from __future__ import annotations

import logging
import math
import time

import keras

from . import distribute
from .interrupts import StopRequest

log = logging.getLogger("transfer")


class Checkpoint(keras.callbacks.ModelCheckpoint):
    """Saves the full model's weights, also while ``fit`` runs on the head alone (feature caching)."""

    def __init__(self, full_model: keras.Model, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.full_model = full_model

    def set_model(self, model):
        super().set_model(self.full_model)


class HistoryCSV(keras.callbacks.CSVLogger):
    """CSVLogger that appends across phases, with each epoch's phase, learning rate and the seconds since the
    run ``started`` (so accuracy can be read against time), in the same columns in every row, so that the
    phases' rows line up."""

    def __init__(self, path: str, phase: str, started: float):
        super().__init__(path, append=True)
        self.phase, self.started = phase, started

    def on_epoch_end(self, epoch, logs=None):
        logs = {**(logs or {}), "phase": self.phase, "learning_rate": learning_rate(self.model),
                "elapsed_seconds": round(time.monotonic() - self.started, 2)}
        if self.keys is None:  # the columns: validation's too, even if the first epoch was not validated
            self.keys = sorted({*logs, *(f"val_{name}" for name in ("loss", "accuracy"))})
        super().on_epoch_end(epoch, logs)


def learning_rate(model: keras.Model) -> float:
    """The optimizer's rate now (a schedule's at its current step)."""
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


class StopOnNaN(keras.callbacks.Callback):
    """Stops a phase at the first batch loss or validation loss that is not finite, and says where.

    Keras' own ``TerminateOnNaN`` ends ``fit`` as quietly as a finished phase;
    a run whose weights are NaN must never be saved as a finished one.
    ``found`` is (which loss, epoch) once it has happened.
    """

    def __init__(self):
        super().__init__()
        self.epoch, self.found = 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._check("training loss", (logs or {}).get("loss"))

    def on_epoch_end(self, epoch, logs=None):
        self._check("validation loss", (logs or {}).get("val_loss"))

    def _check(self, what: str, value) -> None:
        if value is not None and self.found is None and not math.isfinite(float(value)):
            self.found = (what, self.epoch)
            self.model.stop_training = True


class Validation(keras.callbacks.Callback):
    """Validates every ``freq`` epochs and on the phase's last epoch (also when ``--time-limit`` ends it),
    adding ``val_*`` to that epoch's logs.

    Used instead of ``fit(validation_data=...)`` because Keras' ``validation_freq``
    may skip the last epoch, the one a cosine schedule ends on. The callbacks
    after this one (and Keras' progress bar, which comes last) see the metrics.
    """

    def __init__(self, val_ds, freq: int, first_epoch: int, last_epoch: int):
        super().__init__()
        self.val_ds, self.freq, self.first_epoch, self.last_epoch = val_ds, freq, first_epoch, last_epoch

    def on_epoch_end(self, epoch, logs=None):
        if (epoch - self.first_epoch + 1) % self.freq and epoch < self.last_epoch and not self.model.stop_training:
            return
        results = distribute.evaluate(self.model, self.val_ds)
        logs.update({f"val_{name}": float(value) for name, value in results.items()})


class TimeLimit(keras.callbacks.Callback):
    """Ends a phase at ``deadline`` (after the batch that reaches it) and, given ``lr``, decays the
    learning rate from ``lr`` to 0 on a cosine over the phase's time or its ``steps``, whichever
    runs out first.

    So a run with ``--time-limit`` ends its schedule on time on any machine: a slow
    machine trains fewer epochs, not an unfinished schedule. ``start`` and
    ``done`` (steps) are where the phase stands; a resumed phase sets them back.
    """

    def __init__(self, deadline: float, lr: float | None, steps: int, clock=time.monotonic, what="--time-limit"):
        super().__init__()
        self.deadline, self.lr, self.steps, self.clock, self.what = deadline, lr, steps, clock, what
        self.start, self.done, self.reached = None, 0, False

    def on_train_begin(self, logs=None):
        self.start = self.clock()

    def on_train_batch_begin(self, batch, logs=None):
        if self.lr is not None:
            progress = max((self.clock() - self.start) / max(self.deadline - self.start, 1e-9), self.done / self.steps)
            self.model.optimizer.learning_rate = self.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def on_train_batch_end(self, batch, logs=None):
        self.done += 1
        if self.clock() >= self.deadline:
            self.model.stop_training = self.reached = True

    def on_train_end(self, logs=None):
        if self.reached:
            log.info("%s reached: this phase stops here", self.what)


class WhenValidated(keras.callbacks.Callback):
    """Runs ``inner`` (early stopping, checkpoint, LR reduction) only on the epochs that were validated,
    so that ``--patience`` counts validations and no epoch without a metric counts as a worse one."""

    def __init__(self, inner: keras.callbacks.Callback, monitor: str):
        super().__init__()
        self.inner, self.monitor = inner, monitor

    def set_model(self, model):
        self.inner.set_model(model)

    def set_params(self, params):
        self.inner.set_params(params)

    def on_train_begin(self, logs=None):
        self.inner.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self.inner.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if self.monitor in (logs or {}):
            self.inner.on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        self.inner.on_train_end(logs)


class StopAfterBatch(keras.callbacks.Callback):
    """Raises ``KeyboardInterrupt`` after the batch (or the epoch's end) during which a signal asked to stop.

    It comes after the backup among the callbacks, so an epoch that has just
    finished is backed up before the run stops.
    """

    def __init__(self, stop: StopRequest):
        super().__init__()
        self.stop = stop

    def on_train_batch_end(self, batch, logs=None):
        self._check()

    def on_epoch_end(self, epoch, logs=None):
        self._check()

    def _check(self):
        if self.stop.signum is not None:
            raise KeyboardInterrupt
