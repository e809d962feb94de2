"""Phase 1 on cached features held in memory: every epoch one compiled call, not one Keras step per batch.

With the backbone frozen and its features in RAM, an epoch of the head is a
few GFLOP, yet Keras' ``fit`` spends 1-2.5 s on it on a CPU: its per-step,
per-callback and per-epoch overhead (and a backup of the whole model every
epoch) is nearly all of the cost. Here one ``tf.function`` runs a whole
epoch: it shuffles the rows, draws a view of each (the image or its mirror
image, as ``--augment flip`` does), takes the optimizer's steps in a graph
loop and validates on the whole validation matrix. The head is the run's own
Keras head (the same layers, loss, optimizer, class weights and
regularization), so everything after phase 1 sees the model ``fit`` would have
trained; only how its weights are found differs. benchmarks/bench_head.py
measures it against ``fit`` on the same features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np

from ..config import MONITOR_MODES
from ..layers import SparseSmoothedCrossentropy

#: rows per step: the run's --batch-size, raised so that an epoch has at most this many steps
MAX_STEPS = 32


@dataclass
class Arrays:
    """A phase's cached features in RAM: ``train_x`` (rows, views, features), ``val_x`` the same for validation."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray


def step_size(batch_size: int, rows: int) -> int:
    """The rows of one step: ``batch_size``, or more where an epoch would otherwise take over :data:`MAX_STEPS`."""
    return max(batch_size, math.ceil(rows / MAX_STEPS))


class EpochFit:
    """One compiled epoch of ``top`` (compiled with its optimizer and loss) on ``arrays``.

    ``random_view``: each row is the image or its mirror image, drawn anew
    each epoch (else always the image). ``class_weight`` weighs each row's loss
    as Keras' ``fit`` does; ``label_smoothing`` is the run's. Calling it runs epoch ``epoch`` (which fixes its
    shuffle and draws with ``seed``) and returns its loss, accuracy and validation metrics.

    :meth:`restart` fits the same head anew on other rows (the folds of ``--backbone auto``'s measurement) without
    tracing the epoch again: the arrays are arguments of the compiled epoch, not constants inside it.
    """

    def __init__(self, top: keras.Model, arrays: Arrays, batch_size: int, seed: int, random_view: bool,
                 class_weight: dict[int, float] | None = None, label_smoothing: float = 0.0):
        import tensorflow as tf

        self.top, self.seed, self.batch_size, self.class_weight = top, seed, batch_size, class_weight or {}
        self.loss = SparseSmoothedCrossentropy(label_smoothing)  # with 0: Keras' sparse cross-entropy
        self.views = arrays.train_x.shape[1] if random_view else 1
        if not top.optimizer.built:
            top.optimizer.build(top.trainable_variables)
        self._start = [v.numpy() for v in (*top.variables, *top.optimizer.variables)]
        signature = [tf.TensorSpec([2], tf.int64), _rows(arrays.train_x, tf.float32), _rows(arrays.train_y, tf.int32),
                     _rows(arrays.train_y, tf.float32), _rows(arrays.val_x, tf.float32), _rows(arrays.val_y, tf.int32),
                     tf.TensorSpec([], tf.int32)]
        # a plain graph (its loop is a tf.while_loop), traced once for every set of rows
        self._epoch = tf.function(self._run, input_signature=signature, autograph=False)
        self._load(arrays)

    def restart(self, arrays: Arrays) -> None:
        """Fit anew on ``arrays`` (rows of the same width): the head's weights, random state and optimizer as they
        were when this was made, so that a fold's fit is the one a fresh head would make."""
        for variable, value in zip((*self.top.variables, *self.top.optimizer.variables), self._start):
            variable.assign(value)
        self._load(arrays)

    def _load(self, arrays: Arrays) -> None:
        import tensorflow as tf

        weights = np.ones(int(arrays.train_y.max(initial=0)) + 1, np.float32)
        for label, weight in self.class_weight.items():
            weights[label] = weight
        self._data = (tf.constant(arrays.train_x, tf.float32), tf.constant(arrays.train_y, tf.int32),
                      tf.constant(weights[arrays.train_y]), tf.constant(arrays.val_x, tf.float32),
                      tf.constant(arrays.val_y, tf.int32), tf.constant(step_size(self.batch_size, len(arrays.train_y))))

    def __call__(self, epoch: int) -> dict[str, float]:
        import tensorflow as tf

        values = self._epoch(tf.constant([self.seed, epoch], tf.int64), *self._data)
        return {name: float(value) for name, value in values.items()}

    def _run(self, seed, train_x, train_y, row_weight, val_x, val_y, batch):
        import tensorflow as tf

        rows = tf.shape(train_y)[0]
        order = tf.random.experimental.stateless_shuffle(tf.range(rows), seed)
        view = tf.random.stateless_uniform([rows], seed + 1, 0, self.views, tf.int32)
        x = tf.gather_nd(train_x, tf.stack([order, view], axis=1))[:, None]  # one view, kept as a views axis
        y, w = tf.gather(train_y, order), tf.gather(row_weight, order)

        def step(start, loss_sum, correct):
            end = tf.minimum(start + batch, rows)
            loss, hits = self._step(x[start:end], y[start:end], w[start:end])
            return end, loss_sum + loss * tf.cast(end - start, tf.float32), correct + hits

        _, loss_sum, correct = tf.while_loop(lambda start, *_: start < rows, step,
                                             (tf.constant(0), tf.constant(0.0), tf.constant(0.0)))
        val_loss, val_hits = self._measure(val_x, val_y)
        count, val_count = tf.cast(rows, tf.float32), tf.cast(tf.shape(val_y)[0], tf.float32)
        return {"loss": loss_sum / count, "accuracy": correct / count,
                "val_loss": val_loss, "val_accuracy": val_hits / val_count}

    def _step(self, x, y, w):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            probabilities = self.top(x, training=True)
            loss = self._loss(y, probabilities, w)
            total = loss + tf.add_n([tf.cast(r, tf.float32) for r in self.top.losses] or [tf.constant(0.0)])
        variables, optimizer = self.top.trainable_variables, self.top.optimizer
        # scaled as fit scales it: a loss-scale optimizer (mixed precision) unscales the gradients it is given
        optimizer.apply_gradients(zip(tape.gradient(optimizer.scale_loss(total), variables), variables))
        return loss, _hits(y, probabilities)

    def _measure(self, x, y):
        """Validation loss (unweighted, as Keras' ``evaluate``) and the number of right answers."""
        probabilities = self.top(x, training=False)
        return self._loss(y, probabilities, None), _hits(y, probabilities)

    def _loss(self, y, probabilities, weights):
        """The run's loss, weighted by row and averaged over the rows, as ``fit`` averages it."""
        import tensorflow as tf

        return tf.cast(self.loss(y, probabilities, weights), tf.float32)


def _rows(array: np.ndarray, dtype):
    """The spec of ``array`` with any number of rows: one trace serves arrays of every length."""
    import tensorflow as tf

    return tf.TensorSpec([None, *array.shape[1:]], dtype)


def _hits(y, probabilities):
    import tensorflow as tf

    return tf.reduce_sum(tf.cast(tf.equal(tf.argmax(probabilities, axis=-1, output_type=tf.int32), y), tf.float32))


def better(monitor: str, value: float, than: float | None) -> bool:
    """Whether ``value`` of ``monitor`` (val_loss: lower; val_accuracy: higher) improves on ``than`` (None: nothing)."""
    if than is None or not math.isfinite(than):
        return True
    return value > than if MONITOR_MODES[monitor] == "max" else value < than


class Watch:
    """Early stopping, the learning rate and the best epoch of a compiled phase, as the callbacks of ``fit`` do.

    The rate is ``lr`` divided by 5 after ``patience // 2`` epochs without
    improvement (down to ``lr / 100``), as ``ReduceLROnPlateau`` does, or, given
    ``cosine_epochs``, a cosine decay over them. ``best_weights`` is the
    model's weights at its best epoch.
    """

    def __init__(self, monitor: str, patience: int, lr: float, cosine_epochs: int | None = None):
        self.monitor, self.patience, self.base, self.cosine_epochs = monitor, patience, lr, cosine_epochs
        self.rate, self.wait, self.stalled = lr, 0, 0
        self.best, self.best_epoch, self.best_weights = None, -1, None

    @property
    def stopped(self) -> bool:
        return self.wait >= self.patience

    def lr(self, epoch_in_phase: int) -> float:
        if self.cosine_epochs is None:
            return self.rate
        return self.base * 0.5 * (1 + math.cos(math.pi * min(1.0, epoch_in_phase / self.cosine_epochs)))

    def epoch_end(self, epoch: int, logs: dict[str, float], model: keras.Model) -> None:
        value = logs[self.monitor]
        if better(self.monitor, value, self.best):
            self.best, self.best_epoch, self.best_weights = value, epoch, model.get_weights()
            self.wait = self.stalled = 0
            return
        self.wait += 1
        self.stalled += 1
        if self.stalled >= max(1, self.patience // 2):
            self.rate, self.stalled = max(self.rate * 0.2, self.base / 100), 0


def probe_epoch(model: keras.Model, train_ds, config) -> float:
    """Seconds one epoch of ``model`` on ``train_ds`` takes, measured on one batch: the forward pass and the
    gradients of the trainable weights (not applied), times the batches of an epoch (a lower bound: no optimizer)."""
    import time

    import tensorflow as tf

    x, y = next(iter(train_ds))
    loss = SparseSmoothedCrossentropy(config.label_smoothing)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        return tape.gradient(value, model.trainable_variables)

    step(x, y)  # traced here: an epoch pays that once, not per batch
    started = time.perf_counter()
    step(x, y)
    return (time.perf_counter() - started) * int(train_ds.cardinality())
