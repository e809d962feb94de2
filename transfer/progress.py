"""Each epoch on stderr, in place of Keras' progress bar: a bar on a terminal, and always one line when it ends.

Keras' own bar (``fit(verbose=1)``) redraws itself into CI logs, and its
``verbose=2`` line counts epochs across both phases without naming them. Here
the line says the phase, its epoch out of the phase's, the metrics and the time:
``epoch 3/10 (head)  loss 0.4102  acc 0.8812  val_loss 0.3901  val_acc 0.9000  12.3 s``.
"""

from __future__ import annotations

import logging
import time

import keras

from .console import bar

log = logging.getLogger("transfer")

#: the metrics an epoch's line shows, in this order, and how it names them
SHOWN = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}


class EpochProgress(keras.callbacks.Callback):
    """One phase's epochs: ``first`` is the index of its first epoch in the run, ``epochs`` how many it has.

    ``verbose`` is the config's: 0 shows nothing, 1 a bar per epoch on a terminal
    (rate and ETA) and a line per epoch, 2 the lines alone. Must come after the
    callback that adds the validation metrics.
    """

    def __init__(self, phase: str, first: int, epochs: int, verbose: int):
        super().__init__()
        self.phase, self.first, self.epochs, self.verbose = phase, first, epochs, verbose
        self.started, self.shown = 0.0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.monotonic()
        if self.verbose == 1:
            self.shown = bar(total=self.params.get("steps"), desc=self._title(epoch), unit="batch")

    def on_train_batch_end(self, batch, logs=None):
        if self.shown is not None:
            self.shown.set_postfix_str(_metrics(logs or {}), refresh=False)
            self.shown.update(1)

    def on_epoch_end(self, epoch, logs=None):
        self.on_train_end()
        if self.verbose:
            log.info("%s  %s  %.1f s", self._title(epoch), _metrics(logs or {}), time.monotonic() - self.started)

    def on_train_end(self, logs=None):
        """Also where an epoch ends early (``--time-limit``, a NaN loss): the bar goes, and its line is not left."""
        if self.shown is not None:
            self.shown.close()
            self.shown = None

    def _title(self, epoch: int) -> str:
        return f"epoch {epoch - self.first + 1}/{self.epochs} ({self.phase})"


def _metrics(logs: dict) -> str:
    return "  ".join(f"{name} {float(logs[key]):.4f}" for key, name in SHOWN.items() if key in logs)
