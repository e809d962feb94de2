"""``train``: one run from a dataset folder to a finished run folder.

The steps, in order: check everything that can be checked (preflight), scan
and audit the images, build the model, plan its phases, run them
(:class:`.runner.Runner`), then evaluate and save (:func:`_finish`).
Everything a run produces is written through :class:`transfer.runs.RunFolder`,
so an interrupted run leaves earlier runs untouched and can be resumed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import time
from dataclasses import dataclass
from typing import Any

import keras

from .. import data, devices, features, preflight, runs, selection
from ..export import portable
from ..backbones import BackboneSpec
from ..reports.evaluate import report_run
from ..config import TrainConfig, parse_duration
from ..errors import ConfigError, Interrupted
from ..heads import backbone_of, build_model, unfreeze_index
from . import distribute, interrupts, probe, resume
from .results import evaluate, plot, read_history, restore_best
from .phases import Sources, plan
from .precision import dtype_policy, is_mixed
from .runner import Runner

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


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train a classifier on ``config.data_dir`` and write its run folder. Never prints; logs to ``transfer``.

    ``resume``: continue the unfinished run ``config.name`` from its last
    finished epoch, with the settings it was started with (a setting of
    ``config`` that differs from them is an error). Ctrl-C or SIGTERM stops
    after the current batch with :class:`transfer.errors.Interrupted`.
    """
    started = time.monotonic()  # --time-limit counts from here: the scan and decoding are part of the run
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a transfer.TrainConfig; got {type(config).__name__}. Build one with "
                          "TrainConfig(data_dir=..., ...), or TrainConfig.from_dict(settings) from a dict.")
    config = config.validate(need_data=not resume)  # --resume may leave DATA_DIR to the run
    strategy = distribute.strategy(config.distribute,  # before TensorFlow runs anything
                                   parse_duration(config.cluster_timeout, "--cluster-timeout"))
    workers = distribute.workers(strategy)
    # scratch: where a worker that is not the chief writes; worker_lost: one line when another worker stopped
    with distribute.scratch(config) as scratch, distribute.worker_lost(strategy):
        if resume:
            config = preflight.resumed(distribute.share_partial_run(config, scratch, workers))
        # config.json records what was used, not "auto"
        config = dataclasses.replace(distribute.place(config, scratch),
                                     mixed_precision="on" if is_mixed(config.mixed_precision) else "off")
        with dtype_policy(config.mixed_precision), interrupts.handled() as stop:
            spec, config = preflight.check(config, resume=resume)  # options, memory, name, destination: first
            try:
                return _train(spec, config, started, resume, stop, strategy, workers)
            except KeyboardInterrupt:
                raise _interrupted(config, stop.status, workers) from None


def _train(spec: BackboneSpec, config: TrainConfig, started: float, resuming: bool,
           stop: interrupts.StopRequest, strategy, workers: distribute.Workers | None) -> TrainResult:
    run = runs.RunFolder(config.output_dir, config.name, config.overwrite, data_dir=config.data_dir, resume=resuming)
    state = resume.load(run) if resuming else resume.State()
    dataset = data.scan(config.data_dir, config.val_split, config.seed, max_pixels=config.max_pixels,
                        dedupe=config.dedupe, cache_dir=config.cache_dir, progress=config.verbose > 0, workers=workers,
                        exclude=config.exclude)
    data.check_skips(dataset, config.strict, config.max_skip_fraction)
    laps = _Laps(started, state.laps)
    laps.lap("audit")
    class_weights = data.class_weights(dataset, config.class_weight)
    config = dataclasses.replace(config, data_dir=dataset.root)
    log.info("classes: %s; images: %s", ", ".join(dataset.classes),
             ", ".join(f"{k} {len(v)}" for k, v in dataset.splits.items()))
    choice = None
    if selection.requested(config):  # --backbone auto: measured on this data; config.json then names the winner
        from .auto import choose

        deadline = parse_duration(config.time_limit)
        spec, config, choice = choose(config, dataset, {c.path: c.digest for c in dataset.report.used},
                                      class_weights, deadline and started + deadline, workers)
        preflight.check_memory(spec, config)
        laps.lap("backbone_choice")
    _seed(config)
    batched = distribute.global_batch(config, strategy)  # what the pipelines batch; config.json keeps --batch-size
    with strategy.scope():  # the variables, mirrored on every replica
        model = build_model(spec, config, len(dataset.classes))
        _check_depths(model, config)  # a bad --unfreeze fails now, not after phase 1
        laps.lap("model")  # building it, converting or reading pretrained weights
        caches = _caches(model, spec, batched, {c.path: c.digest for c in dataset.report.used}, workers)
    run.start()
    if resuming:
        resume.check_labels(run, dataset.classes)
        resume.restore_run(run, state, model)
    else:
        _write_inputs(run, config, spec, dataset, class_weights, choice)

    fit_started = time.perf_counter()
    train_images, val_ds = _images(dataset, batched)
    sources = Sources(model, spec, dataset, train_images, val_ds, *caches)
    runner = Runner(run, batched, model, state, started - state.elapsed, stop, laps, class_weights, workers)
    runner.run_phases(plan(batched, sources))
    if config.restore_best:
        restore_best(model, run.path(runs.CHECKPOINT_FILE))
    seconds = time.perf_counter() - fit_started
    model = distribute.finished(model, *caches)  # what follows evaluates and predicts as on one machine
    result = _finish(run, model, config, dataset, seconds, caches, val_ds, state.timed_out, laps)
    runner.board.confusion(result.metrics["val"]["confusion_matrix"], result.labels, step=state.epoch - 1)
    runner.board.close()
    return result


def _check_depths(model: keras.Model, config: TrainConfig) -> None:
    """--unfreeze names a layer of the backbone; --deeper-unfreeze (when a deeper phase is planned) one below it."""
    backbone = backbone_of(model)
    start = unfreeze_index(backbone, config.unfreeze)
    if config.deepens and unfreeze_index(backbone, config.deeper_unfreeze, "--deeper-unfreeze") >= start:
        raise ConfigError(f"--deeper-unfreeze {config.deeper_unfreeze!r} does not start below --unfreeze "
                          f"{config.unfreeze!r}: name an earlier layer of {config.backbone}, or none.")


def _seed(config: TrainConfig) -> None:
    """Seed Python, NumPy and TensorFlow; ``--deterministic`` also makes TensorFlow's ops deterministic (for the
    rest of the process: TensorFlow cannot turn it off)."""
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
        log.info("deterministic ops: the same --seed, data and options give the same model")


def _images(dataset: data.Dataset, config: TrainConfig):
    """The decoded training images (each phase shuffles them anew) and the validation batches."""
    decode = {"image_size": config.image_size, "resize": config.resize, "max_pixels": config.max_pixels}
    budget = data.memory_budget(config.cache_memory)  # shared by the decoded training and validation images
    train_images = data.decoded_images(dataset.splits["train"], **decode, budget=budget)
    train_bytes = data.decoded_bytes(dataset.splits["train"], config.image_size)
    budget -= train_bytes if train_bytes <= budget else 0  # what the training images' cache takes, if they have one
    return train_images, data.batches(data.decoded_images(dataset.splits["val"], **decode, budget=budget),
                                      config.batch_size)


def _finish(run: runs.RunFolder, model: keras.Model, config: TrainConfig, dataset: data.Dataset, seconds: float,
            caches: tuple[features.FeatureCache | None, ...], val_ds, timed_out: list[str],
            laps: "_Laps") -> TrainResult:
    """The end of training: evaluate, save the model, metrics.json and the plot, and move the run into place."""
    history = read_history(run.path(runs.HISTORY_FILE))
    tuned = any(row["phase"] != "head" for row in history) and not probe.kept_head(run)
    metrics, probabilities = evaluate(model, config, dataset, history, seconds, None if tuned else caches[0], val_ds)
    metrics["time_limit_stopped"] = timed_out
    laps.lap("evaluate")
    metrics["seconds"] = laps.record(*caches)
    portable.save(model, run.path(runs.MODEL_FILE))  # built-in layers only: plain Keras opens it
    runs.write_json(run.path(runs.METRICS_FILE), metrics)
    plot(history, run.path(runs.PLOT_FILE))
    # per-class metrics into metrics.json, confusion_matrix.png and report.html (transfer/reports/evaluate.py)
    metrics = report_run(run, model, config, dataset, metrics, probabilities)
    run_dir = run.commit()
    log.info("run saved to %s", run_dir)
    return TrainResult(run_dir, model, dataset.classes, metrics, history, config)


def _caches(model: keras.Model, spec: BackboneSpec, config: TrainConfig, digests: dict[str, str],
            workers: distribute.Workers | None):
    """Phase 1's feature cache, phase 2's boundary cache and the deeper phase's (None: that phase trains on images).

    Both are made before any training, so that they are keyed by the backbone's
    weights as the run starts, which a resumed run (whose weights come from its
    backup) keys them by too: it finds the features it computed.
    """
    if not features.use_cache(spec, config):
        return None, None, None
    cache = features.frozen_phase_cache(model, config, digests, workers)
    boundary = features.boundary_cache(model, config, config.unfreeze, digests, workers) if config.fine_tunes else None
    if not config.deepens:
        return cache, boundary, None
    return cache, boundary, features.boundary_cache(model, config, config.deeper_unfreeze, digests, workers)


def _interrupted(config: TrainConfig, status: int, workers: distribute.Workers | None) -> Interrupted:
    """What the user reads after Ctrl-C: how to continue, when an epoch was backed up."""
    staging = os.path.join(config.output_dir, config.name + runs.STAGING_SUFFIX)
    if runs.latest_backup(staging) is None:
        return Interrupted("Interrupted before an epoch finished; finished runs and exports are untouched.", status)
    if workers is not None:  # every worker stopped after the same batch (distribute.agreement)
        return Interrupted(f"Interrupted; the chief's {config.name + runs.STAGING_SUFFIX} keeps every finished epoch. "
                           "Continue by starting every worker again with the same command and --resume.", status)
    command = shlex.join(["transfer", "train", "--output-dir", os.path.abspath(config.output_dir), "--name",
                          config.name, "--resume"])  # the run knows its DATA_DIR and settings
    return Interrupted(f"Interrupted; {staging} keeps every finished epoch. Continue with: {command}", status)


class _Laps:
    """Seconds spent in each stage of a run, for metrics.json: where the time of a slow run went (a resumed
    run adds its own to what its backup recorded)."""

    def __init__(self, started: float, seconds: dict[str, float]):
        self.last, self.seconds = started, dict(seconds)

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.seconds[stage] = round(self.seconds.get(stage, 0) + now - self.last, 2)
        self.last = now

    def record(self, *caches: features.FeatureCache | None) -> dict[str, float]:
        """The stages, and how much of them the backbone's passes over the images took (part of head/fine_tune)."""
        computing = [round(c.seconds, 2) for c in caches if c is not None]
        return {**self.seconds, **({"features": computing} if computing else {})}


def _write_inputs(run: runs.RunFolder, config: TrainConfig, spec: BackboneSpec, dataset: data.Dataset,
                  class_weights: dict[int, float] | None, choice: dict | None = None) -> None:
    """Labels, split, skipped files, config and environment first, so even an interrupted run says what it was
    doing, and where."""
    data.write_manifest(dataset, run.path(runs.SPLIT_FILE))
    runs.write_json(run.path(runs.FINGERPRINT_FILE), data.fingerprint(dataset.root))
    data.write_skipped(dataset, run.path(runs.SKIPPED_FILE))
    runs.write_text(run.path(runs.LABELS_FILE), "".join(f"{c}\n" for c in dataset.classes))
    report = dataset.report
    info = {"root": dataset.root, "split_source": dataset.split_source, "counts": dataset.counts(),
            "class_weights": {dataset.classes[i]: w for i, w in class_weights.items()} if class_weights else None,
            "audit": {"skipped": len(report.skipped), "ignored": report.ignored + report.junk, "unused": len(report.unused),
                      "duplicate_groups": len(report.duplicates), "leaks": len(report.leaks),
                      "dropped": len(report.dropped), "excluded": len(report.excluded)}}
    record = runs.run_record(config, dataset.classes, spec.preprocessing, info)
    if choice is not None:  # --backbone auto: the request and its table; "config" names the backbone chosen
        record["backbone_choice"] = choice
        runs.write_json(run.path(runs.BACKBONE_CHOICE_FILE), choice)
    runs.write_json(run.path(runs.CONFIG_FILE), record)
    runs.write_json(run.path(runs.ENVIRONMENT_FILE), devices.environment())
