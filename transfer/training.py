"""The two-phase schedule: train the head on a frozen backbone, then fine-tune its top.

Everything a run produces is written through :class:`transfer.runs.RunFolder`,
so an interrupted run leaves earlier runs untouched.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import keras

from . import data, evaluation, features, preflight, runs
from .backbones import BackboneSpec
from .config import TrainConfig, option_name, parse_duration
from .devices import has_gpu
from .errors import TrainingError
from .heads import backbone_of, build_model, freeze_backbone, unfreeze_index, unfreeze_top
from .layers import SparseSmoothedCrossentropy

log = logging.getLogger("transfer")


@dataclass
class TrainResult:
    """What :func:`train` returns; the run folder holds the same, on disk."""

    run_dir: str
    model: keras.Model
    labels: list[str]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    config: TrainConfig


def train(config: TrainConfig) -> TrainResult:
    """Train a classifier on ``config.data_dir`` and write its run folder. Never prints; logs to ``transfer``."""
    started = time.monotonic()  # --time-limit counts from here: the scan and decoding are part of the run
    config = config.validate()
    # config.json records what was used, not "auto"
    config = dataclasses.replace(config, mixed_precision="on" if _mixed(config.mixed_precision) else "off")
    with dtype_policy(config.mixed_precision):
        return _train(config, started)


def _train(config: TrainConfig, started: float) -> TrainResult:
    spec, config = preflight.check(config)  # options, memory, name and destination, before any slow work
    run = runs.RunFolder(config.output_dir, config.name, config.overwrite, data_dir=config.data_dir)
    dataset = data.scan(config.data_dir, config.val_split, config.seed, max_pixels=config.max_pixels,
                        dedupe=config.dedupe, cache_dir=config.cache_dir, progress=config.verbose > 0)
    data.check_skips(dataset, config.strict, config.max_skip_fraction)
    laps = _Laps(started)
    laps.lap("audit")
    class_weights = data.class_weights(dataset, config.class_weight)
    config = dataclasses.replace(config, data_dir=dataset.root)
    log.info("classes: %s; images: %s", ", ".join(dataset.classes),
             ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items()))
    keras.utils.set_random_seed(config.seed)
    model = build_model(spec, config, len(dataset.classes))
    unfreeze_index(backbone_of(model), config.unfreeze)  # a bad --unfreeze fails now, not after phase 1
    laps.lap("model")  # building it, converting or reading pretrained weights
    digests = {c.path: c.digest for c in dataset.report.used}
    cache = features.frozen_phase_cache(model, config, digests) if features.use_cache(spec, config) else None
    run.start()
    _write_inputs(run, config, spec, dataset, class_weights)

    fit_started = time.perf_counter()
    decode = {"image_size": config.image_size, "resize": config.resize, "max_pixels": config.max_pixels}
    budget = data.memory_budget(config.cache_memory)  # shared by the decoded training and validation images
    train_images = data.decoded_images(dataset.splits["train"], **decode, budget=budget)
    train_bytes = data.decoded_bytes(dataset.splits["train"], config.image_size)
    budget -= train_bytes if train_bytes <= budget else 0  # what the training images' cache takes, if they have one
    train_ds = data.batches(train_images, config.batch_size, shuffle=True, seed=config.seed)
    val_ds = data.batches(data.decoded_images(dataset.splits["val"], **decode, budget=budget), config.batch_size)
    checkpoint = _Checkpoint(model, run.path(runs.CHECKPOINT_FILE), monitor=config.monitor, save_best_only=True,
                             save_weights_only=True)
    limit = parse_duration(config.time_limit)
    deadline = started + limit if limit else None
    fit = {"model": model, "config": config, "run": run, "train_ds": train_ds, "val_ds": val_ds,
           "checkpoint": checkpoint, "class_weight": class_weights, "started": started}
    done, timed_out = 0, []
    if config.epochs:
        freeze_backbone(model, frozen=spec.pretrained)
        log.info("phase 1: %s", "head only, backbone frozen" if spec.pretrained else "whole network, from scratch")
        done, cut = _fit(**_inputs(fit, cache, dataset, config), phase="head", optimizer=config.optimizer, lr=config.lr,
                         done=done, epochs=config.epochs, deadline=_share(deadline, config))
        timed_out += ["head"] if cut else []
        laps.lap("head")
    boundary = None
    if config.fine_tune_epochs:
        n = unfreeze_top(model, config.unfreeze, keep_batchnorm_frozen=spec.pretrained)
        log.info("phase 2: fine-tuning %d backbone layers from %s", n, config.unfreeze)
        boundary = features.boundary_cache(model, config, digests) if cache is not None else None
        # a fresh shuffle (over the same decoded images), so that phase 2 sees the same order whether phase 1
        # ran on images or on cached features
        fit["train_ds"] = data.batches(train_images, config.batch_size, shuffle=True, seed=config.seed)
        done, cut = _fit(**_inputs(fit, boundary, dataset, config), phase="fine_tune",
                         optimizer=config.fine_tune_optimizer, lr=config.fine_tune_lr, done=done,
                         epochs=config.fine_tune_epochs, deadline=deadline)
        timed_out += ["fine_tune"] if cut else []
        laps.lap("fine_tune")
    if config.restore_best:
        _restore_best(model, run.path(runs.CHECKPOINT_FILE))
    seconds = time.perf_counter() - fit_started

    history = read_history(run.path(runs.HISTORY_FILE))
    metrics = {**_evaluate(model, config, dataset, history, seconds, cache, val_ds), "time_limit_stopped": timed_out}
    laps.lap("evaluate")
    metrics["seconds"] = laps.record(cache, boundary)
    model.save(run.path(runs.MODEL_FILE))
    runs.write_json(run.path(runs.METRICS_FILE), metrics)
    _plot(history, run.path(runs.PLOT_FILE))
    # issue 15: per-class metrics into metrics.json, confusion_matrix.png and report.html (transfer/evaluation.py)
    metrics = evaluation.report_run(run, model, config, dataset, metrics, val_ds, cache)
    run_dir = run.commit()
    log.info("run saved to %s", run_dir)
    return TrainResult(run_dir, model, dataset.classes, metrics, history, config)


class _Laps:
    """Seconds spent in each stage of a run, for metrics.json: where the time of a slow run went."""

    def __init__(self, started: float):
        self.last, self.seconds = started, {}

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.seconds[stage] = round(now - self.last, 2)
        self.last = now

    def record(self, *caches: features.FeatureCache | None) -> dict[str, float]:
        """The stages, and how much of them the backbone's passes over the images took (part of head/fine_tune)."""
        computing = [round(c.seconds, 2) for c in caches if c is not None]
        return {**self.seconds, **({"features": computing} if computing else {})}


def _share(deadline: float | None, config: TrainConfig) -> float | None:
    """Phase 1's deadline: its share of the time left, by epochs (phase 2 gets what phase 1 leaves)."""
    if deadline is None:
        return None
    now = time.monotonic()
    return now + (deadline - now) * config.epochs / (config.epochs + config.fine_tune_epochs)


def _write_inputs(run: runs.RunFolder, config: TrainConfig, spec: BackboneSpec, dataset: data.Dataset,
                  class_weights: dict[int, float] | None) -> None:
    """Labels, split, skipped files and config first, so even an interrupted run says what it was doing."""
    data.write_manifest(dataset, run.path(runs.SPLIT_FILE))
    data.write_skipped(dataset, run.path(runs.SKIPPED_FILE))
    runs.write_text(run.path(runs.LABELS_FILE), "".join(f"{c}\n" for c in dataset.classes))
    report = dataset.report
    info = {"root": dataset.root, "split_source": dataset.split_source, "counts": dataset.counts(),
            "class_weights": {dataset.classes[i]: w for i, w in class_weights.items()} if class_weights else None,
            "audit": {"skipped": len(report.skipped), "ignored": report.ignored + report.junk, "unused": len(report.unused),
                      "duplicate_groups": len(report.duplicates), "leaks": len(report.leaks),
                      "dropped": len(report.dropped)}}
    runs.write_json(run.path(runs.CONFIG_FILE), runs.run_record(config, dataset.classes, spec.preprocessing, info))


@contextlib.contextmanager
def dtype_policy(mode: str):
    """``mixed_float16`` while a run builds and trains (auto: only with a GPU); the global policy is restored after.

    The head's softmax layer is float32 whatever the policy, so probabilities
    and the loss keep full precision.
    """
    previous = keras.mixed_precision.global_policy()
    mixed = _mixed(mode)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    if mixed:
        log.info("mixed precision: float16 compute, float32 weights and output")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _mixed(mode: str) -> bool:
    """Whether ``--mixed-precision on|off|auto`` means float16 compute here (auto: only with a GPU)."""
    return mode == "on" or (mode == "auto" and has_gpu())


def _inputs(fit: dict[str, Any], cache: features.FeatureCache | None, dataset: data.Dataset,
            config: TrainConfig) -> dict[str, Any]:
    """What a phase fits: the full model on images, or the cache's trainable top on cached features.

    Either way the callbacks are those of the full model, which shares the top's layers.
    """
    if cache is None:
        return fit
    if not cache.prepare(dataset.splits["train"] + dataset.splits["val"]):  # one pass of the backbone over both
        log.warning("cached features fit neither --cache-memory nor the cache folder %s; training on images",
                    cache.folder)
        return fit
    train_ds = cache.dataset(dataset.splits["train"], shuffle=True, seed=config.seed,
                             pick="random" if config.augment == "flip" else "first")
    val_ds = cache.dataset(dataset.splits["val"], pick="all" if config.tta and cache.view_axis else "first")
    log.info("feature cache %s: %d image(s) from the cache, %d computed", cache.folder, cache.hits, cache.computed)
    return {**fit, "model": cache.top, "train_ds": train_ds, "val_ds": val_ds, "full_model": fit["model"]}


class _Checkpoint(keras.callbacks.ModelCheckpoint):
    """Saves the full model's weights, also while ``fit`` runs on the head alone (feature caching)."""

    def __init__(self, full_model: keras.Model, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.full_model = full_model

    def set_model(self, model):
        super().set_model(self.full_model)


def make_optimizer(name: str, lr, weight_decay: float | None = None) -> keras.optimizers.Optimizer:
    """``lr`` is a number or a Keras learning-rate schedule; ``weight_decay`` None keeps the optimizer's default."""
    decay = {} if weight_decay is None else {"weight_decay": weight_decay}
    return {
        "adam": lambda: keras.optimizers.Adam(lr, **decay),
        "adamw": lambda: keras.optimizers.AdamW(lr, **decay),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr, **decay),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9, **decay),
    }[name]()


class _HistoryCSV(keras.callbacks.CSVLogger):
    """CSVLogger that appends across phases, with each epoch's phase, learning rate and the seconds since the
    run ``started`` (so accuracy can be read against time), in the same columns in every row, so that the
    phases' rows line up."""

    def __init__(self, path: str, phase: str, started: float):
        super().__init__(path, append=True)
        self.phase, self.started = phase, started

    def on_epoch_end(self, epoch, logs=None):
        learning_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs = {**(logs or {}), "phase": self.phase, "learning_rate": learning_rate,
                "elapsed_seconds": round(time.monotonic() - self.started, 2)}
        if self.keys is None:  # the columns: validation's too, even if the first epoch was not validated
            self.keys = sorted({*logs, *(f"val_{name}" for name in ("loss", "accuracy"))})
        super().on_epoch_end(epoch, logs)


def _fit(model, config, run, train_ds, val_ds, checkpoint, class_weight, started, phase, optimizer, lr, done, epochs,
         deadline=None, full_model=None) -> tuple[int, bool]:
    """Compile (needed after every change of ``trainable``) and fit one phase; return the epochs done so far
    and whether ``--time-limit`` cut the phase short.

    ``started``: the ``time.monotonic()`` at which the run started (history's ``elapsed_seconds``).
    ``deadline``: the ``time.monotonic()`` at which the phase stops (``--time-limit``).
    ``full_model``: when ``model`` is its top, trained on cached features; it is compiled with the same
    optimizer so that it is saved like a model trained on images.
    """
    steps = epochs * int(train_ds.cardinality())
    timer = [_TimeLimit(deadline, lr if config.lr_schedule == "cosine" else None, steps)] if deadline else []
    if config.lr_schedule == "cosine":  # over the phase's steps, or over its time (the timer sets it)
        schedule = lr if timer else keras.optimizers.schedules.CosineDecay(lr, decay_steps=steps)
        adapt = []
    else:
        schedule = lr
        adapt = [keras.callbacks.ReduceLROnPlateau(monitor=config.monitor, factor=0.2,
                                                   patience=max(1, config.patience // 2), min_lr=lr / 100)]
    _compile(model, make_optimizer(optimizer, schedule, config.weight_decay), config)
    if full_model is not None:
        _compile(full_model, model.optimizer, config)
    watchers = adapt + [keras.callbacks.EarlyStopping(monitor=config.monitor, patience=config.patience), checkpoint]
    diverged = _StopOnNaN()
    callbacks = timer + [
        _Validation(val_ds, config.validation_freq, first_epoch=done, last_epoch=done + epochs - 1),
        diverged,
        *(_WhenValidated(watcher, config.monitor) for watcher in watchers),
        _HistoryCSV(run.path(runs.HISTORY_FILE), phase, started),
    ]
    history = model.fit(train_ds, initial_epoch=done, epochs=done + epochs, callbacks=callbacks,
                        verbose=config.verbose, class_weight=class_weight, shuffle=False)  # the dataset shuffles
    if diverged.found:
        what, epoch = diverged.found
        rate = "lr" if phase == "head" else "fine_tune_lr"
        raise TrainingError(f"the {what} became NaN or infinite at epoch {epoch + 1} of phase {phase}, so training "
                            f"stopped and no run was saved (what was written is in {run.staging!r}). Lower "
                            f"{option_name(rate)} (now {lr:g}), or --l2 and --weight-decay if you raised them.")
    return done + len(history.history.get("loss", [])), bool(timer and timer[0].reached)


class _StopOnNaN(keras.callbacks.Callback):
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


class _Validation(keras.callbacks.Callback):
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
        results = self.model.evaluate(self.val_ds, verbose=0, return_dict=True)
        logs.update({f"val_{name}": float(value) for name, value in results.items()})


class _TimeLimit(keras.callbacks.Callback):
    """Ends a phase at ``deadline`` (after the batch that reaches it) and, given ``lr``, decays the
    learning rate from ``lr`` to 0 on a cosine over the phase's time or its ``steps``, whichever
    runs out first.

    So a run with ``--time-limit`` ends its schedule on time on any machine: a slow
    machine trains fewer epochs, not an unfinished schedule.
    """

    def __init__(self, deadline: float, lr: float | None, steps: int, clock=time.monotonic):
        super().__init__()
        self.deadline, self.lr, self.steps, self.clock = deadline, lr, steps, clock
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
            log.info("--time-limit reached: this phase stops here")


class _WhenValidated(keras.callbacks.Callback):
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


def _compile(model, optimizer, config: TrainConfig) -> None:
    smoothing = config.label_smoothing
    loss = SparseSmoothedCrossentropy(smoothing) if smoothing else "sparse_categorical_crossentropy"
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=config.jit)


def _restore_best(model, checkpoint_path: str) -> None:
    """Go back to the best epoch on validation, from either phase (none is saved if every loss was NaN)."""
    if os.path.exists(checkpoint_path):
        with warnings.catch_warnings():  # the checkpoint's optimizer state may be the other phase's: not needed
            warnings.simplefilter("ignore")
            model.load_weights(checkpoint_path)
    else:
        log.warning("no epoch had a finite validation metric; keeping the last weights")


def read_history(path: str) -> list[dict[str, Any]]:
    """history.csv as rows of numbers (the phase stays a string; NaN where an epoch was not validated)."""
    with open(path, newline="") as f:
        return [{k: (v if k == "phase" else float("nan") if v == "NA" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(f)]


def _evaluate(model, config, dataset, history, seconds, cache, val_ds) -> dict[str, Any]:
    """Final metrics; validation reuses its pipeline (decoded images already in memory) or the feature cache."""
    # the backbone never changed, and the head alone is the model (with --tta, on the mirror images' features too)
    on_features = cache is not None and cache.ready and not config.fine_tune_epochs

    def pipeline(split):
        if on_features:
            return cache.dataset(dataset.splits[split], pick="all" if config.tta else "first")
        if split == "val":
            return val_ds
        return data.make_tf_dataset(dataset.splits[split], config.image_size, config.batch_size,
                                    resize=config.resize, cache=False, max_pixels=config.max_pixels)

    evaluated = cache.top if on_features else model
    metrics: dict[str, Any] = {}
    for split in ("val", "test"):
        if split in dataset.splits:
            results = evaluated.evaluate(pipeline(split), verbose=0, return_dict=True)
            metrics[split] = {k: float(v) for k, v in results.items()}
            metrics[split]["images"] = len(dataset.splits[split])
    best = min if config.monitor.endswith("loss") else max
    validated = [row for row in history if not math.isnan(row[config.monitor])] or history[-1:]
    best_row = best(validated, key=lambda row: row[config.monitor])
    metrics.update({
        "monitor": config.monitor,
        "best_epoch": int(best_row["epoch"]) + 1,
        "best_phase": best_row["phase"],
        "epochs": {phase: sum(r["phase"] == phase for r in history) for phase in ("head", "fine_tune")},
        "train_seconds": round(seconds, 2),
    })
    return metrics


def _plot(history, path) -> None:
    from .plots import plot_history

    plot_history(history, path)
