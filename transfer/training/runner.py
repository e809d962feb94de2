"""Executes a run's phases in order against a resumable state.

For each phase the runner compiles what it trains, builds its callbacks and
fits it; after every epoch it backs the state up (:mod:`.resume`), so a run
that is killed continues from its last finished epoch, in the right phase. A
resumed run skips the phases it finished and starts inside the one it was in.
"""

from __future__ import annotations

import logging
import math
import time

import keras
import numpy as np

from .. import runs
from ..config import MONITOR_MODES, TrainConfig, option_name, parse_duration
from ..errors import TrainingError
from ..progress import EpochProgress
from . import distribute, fasthead, probe, resume
from .board import Board
from .callbacks import (Checkpoint, HistoryCSV, StopAfterBatch, StopOnNaN, TimeLimit, Validation, WhenValidated,
                        learning_rate)
from .interrupts import StopRequest
from .phases import Inputs, Phase, compile_model, deadline_of, make_optimizer
from .results import read_history, restore_best

log = logging.getLogger("transfer")


class Runner:
    """Runs phases for one run folder. ``started`` is the ``time.monotonic()`` the run counts from (moved back by
    the time a resumed run had already spent); ``deadline`` the ``--time-limit`` one, or None. ``board`` gets each
    epoch once it is backed up (``--tensorboard``; written by the process that writes the run)."""

    def __init__(self, run: runs.RunFolder, config: TrainConfig, model: keras.Model, state: resume.State,
                 started: float, stop: StopRequest, laps, class_weight: dict[int, float] | None,
                 workers: distribute.Workers | None = None):
        self.run, self.config, self.state, self.workers = run, config, state, workers
        self.started, self.stop, self.laps, self.class_weight = started, stop, laps, class_weight
        self.checkpoint = Checkpoint(model, run.path(runs.CHECKPOINT_FILE), monitor=config.monitor,
                                     mode=MONITOR_MODES[config.monitor], save_best_only=True, save_weights_only=True)
        self.checkpoint.best = state.best
        self.board = Board(config.tensorboard if distribute.writes_run(config) else None)

    @property
    def deadline(self) -> float | None:
        limit = parse_duration(self.config.time_limit)
        return self.started + limit if limit else None

    def _deadline(self, phase: Phase) -> float | None:
        """The end of ``phase``'s time: the run's deadline; without one, for a phase that --fine-tune auto decides
        on, :data:`.probe.WITHIN` seconds after the run's start (``auto``'s choices are bounded by default)."""
        if self.deadline is None and self._probing(phase):
            return self.started + probe.WITHIN[phase.name]
        return self.deadline

    def run_phases(self, phases: list[Phase]) -> None:
        for index, phase in enumerate(phases):
            if index < self.state.phase:
                continue  # finished before the run was resumed
            if index and (self._skipped(index, phase, None) or self._no_room(index, phase)):
                continue
            inputs = phase.setup()
            if index and self._skipped(index, phase, inputs):
                continue
            if inputs.arrays is not None and self._fast(inputs.model):
                self._fit_fast(index, phase, inputs)
            else:
                self._fit(index, phase, inputs)
            self.laps.lap(phase.name)

    def _skipped(self, index: int, phase: Phase, inputs: Inputs | None) -> bool:
        """Whether the time left under --time-limit/--time-budget cannot hold a later phase's first epoch (under
        --fine-tune auto, the probe's epochs): then the phase is skipped (it trains no epoch) and the run says so.
        Before its setup (``inputs`` None) the setup's estimate counts; after it, a measured probe (one batch,
        gradients not applied) times an epoch."""
        deadline = self._deadline(phase)
        if deadline is None or (self.state.phase == index and self.state.mid_phase):
            return False
        left = deadline - time.monotonic()
        epochs = probe.PROBE_EPOCHS if self._probing(phase) else 1  # a probe cut short cannot decide
        need = phase.estimate() if inputs is None else \
            epochs * fasthead.probe_epoch(inputs.model, inputs.train_ds, self.config)
        if not self._agreed(left <= need):
            return False
        what = "the features it trains on take" if inputs is None else f"{epochs} epoch(s) take"
        why = "no time is left" if left <= 0 else f"{left:.0f} s are left and {what} about {need:.0f} s"
        limit = "--time-limit" if self.deadline is not None else \
            f"--fine-tune auto (its phases keep a run within {probe.WITHIN[phase.name]:.0f} s; --time-limit sets more)"
        log.warning("%s: skipped phase %s (%d epoch(s)): %s", limit, phase.name, phase.epochs, why)
        if self._probing(phase):
            probe.skipped(self.run, self.config, f"skipped under {limit}: {why}", stage=phase.name)
        self.state.timed_out.append(phase.name)
        return self._skip(index)

    def _no_room(self, index: int, phase: Phase) -> bool:
        """Under --fine-tune auto, whether the head left too few validation errors for fine-tuning to fix
        (:data:`.probe.ROOM`): then phase 2 is skipped before its boundary pass, and the run says so. The deeper
        phase is skipped where phase 2 did not pay (what did not pay from its point will not pay from below it)."""
        if not self._probing(phase) or (self.state.phase == index and self.state.mid_phase):
            return False
        if phase.name == "deeper":
            return not probe.fine_tuned(self.run) and self._skip(index)
        accuracy = probe.head_accuracy(read_history(self.run.path(runs.HISTORY_FILE)), self.config.monitor)
        if not self._agreed(accuracy is not None and accuracy >= 1 - probe.ROOM):
            return False
        probe.skipped(self.run, self.config, f"skipped: the head scores {accuracy:.4f} on validation, leaving "
                      f"under {probe.ROOM:.0%} of errors to fix", accuracy)
        return self._skip(index)

    def _agreed(self, said: bool) -> bool:
        """On a cluster, whether any worker says so (every worker decides the same, or one would wait forever in
        the next phase, or train on alone); else ``said``."""
        if self.workers is None:
            return said
        return bool(self.workers.total(np.array([int(said)], np.int32))[0] > 0)

    def _skip(self, index: int) -> bool:
        """Move the state past phase ``index``, which trains no epoch."""
        self.state.phase, self.state.phase_start = index + 1, self.state.epoch
        return True

    def _probing(self, phase: Phase) -> bool:
        """Whether a probe decides if ``phase`` pays (--fine-tune auto: phase 2, and the deeper phase)."""
        return phase.name in probe.FILES and self.config.fine_tune == "auto"

    def _fast(self, model: keras.Model) -> bool:
        """Whether phase 1 fits in compiled epochs (:mod:`.fasthead`): with --head-fit auto or fast, on one device."""
        one_device = self.workers is None and model.distribute_strategy.num_replicas_in_sync == 1
        if self.config.head_fit == "fast" and not one_device:
            log.info("--head-fit fast runs on one device: phase 1 runs Keras' fit on the cluster")
        return self.config.head_fit != "keras" and one_device

    def _fit(self, index: int, phase: Phase, inputs: Inputs) -> None:
        """Compile and fit one phase, from its first epoch or, resumed, from the one after the last backup."""
        config, state = self.config, self.state
        resumed = state.phase == index and state.mid_phase
        if not resumed:
            deadline = deadline_of(self._deadline(phase), phase.share)
            state.phase, state.phase_start = index, state.epoch
            state.deadline = None if deadline is None else deadline - self.started
        end = state.phase_start + phase.epochs
        model = inputs.model
        steps = phase.epochs * int(inputs.train_ds.cardinality())
        timer = None
        if state.deadline is not None:
            timer = TimeLimit(self.started + state.deadline, phase.lr if config.lr_schedule == "cosine" else None,
                              steps, what="--time-limit" if self.deadline else "--fine-tune auto's time bound")
        schedule, watchers = _schedule(phase, config, timer, steps)
        with model.distribute_strategy.scope():  # the optimizer's slots mirrored like the weights (--distribute)
            compile_model(model, make_optimizer(phase.optimizer, schedule, config.weight_decay), config)
            if inputs.full_model is not None:  # compiled with the same optimizer: it is saved like one on images
                compile_model(inputs.full_model, model.optimizer, config)
        diverged = StopOnNaN()
        if phase.name == "deeper" and not resumed and config.restore_best:
            restore_best(inputs.whole, self.checkpoint.filepath)  # deeper from phase 2's best epoch, measured there
        probing = probe.start(self.run, config, phase.name, model, inputs.whole, inputs.val_ds, state.phase_start,
                              resumed, self._agreed) if self._probing(phase) else None
        callbacks = [timer] if timer else []
        callbacks += [
            Validation(inputs.val_ds, config.validation_freq, first_epoch=state.phase_start, last_epoch=end - 1),
            diverged,
            *filter(None, [probing]),  # before the backup: a probe that does not pay ends the phase
            *(WhenValidated(watcher, config.monitor) for watcher in [*watchers, self.checkpoint]),
            HistoryCSV(self.run.path(runs.HISTORY_FILE), phase.name, self.started),
            _Backup(self, index, phase.name, end, inputs.whole, watchers, timer, diverged, resumed),
            # not Keras' bar; before the stop below, so that every epoch in history.csv has its line in the log
            EpochProgress(phase.name, first=state.phase_start, epochs=phase.epochs, verbose=config.verbose),
            *([probe.Told(probing)] if probing else []),
            # on a cluster one decision, the signal included; alone, the signal stops after this batch
            distribute.agreement(self.workers, self.stop, timer) or StopAfterBatch(self.stop),
        ]
        self.stop.fitting = True
        try:
            model.fit(distribute.sharded(inputs.train_ds), initial_epoch=state.epoch, epochs=end, callbacks=callbacks,
                      verbose=0, class_weight=self.class_weight, shuffle=False)  # the dataset shuffles
        finally:
            self.stop.fitting = False
        if diverged.found:
            raise self._diverged(phase, *diverged.found)
        if probing is not None:
            probe.settle(probing, self.run, inputs.whole, self.checkpoint, config.monitor)
            state.best = self.checkpoint.best
            resume.save(self.run, state, inputs.whole, None)  # a run resumed from here keeps the settled weights

    def _diverged(self, phase: Phase, what: str, epoch: int) -> TrainingError:
        return TrainingError(f"the {what} became NaN or infinite at epoch {epoch + 1} of phase {phase.name}, so "
                             f"training stopped and no run was saved (what was written is in {self.run.staging!r}). "
                             f"Lower {option_name(phase.lr_option)} (now {phase.lr:g}), or --l2 and "
                             "--weight-decay if you raised them.")

    def _fit_fast(self, index: int, phase: Phase, inputs: Inputs) -> None:
        """Phase 1 in compiled epochs on features in RAM: validated every epoch, stopped by --patience or
        --time-limit, ending on its best epoch (unless --keep-last), backed up once, at its end.

        A run killed inside it resumes at the phase's start (or, from a backup
        that ``fit`` made, at its epoch): the phase takes seconds.
        """
        config, state = self.config, self.state
        if config.validation_freq > 1:
            log.info("--validation-freq %d: phase %s validates every epoch all the same (on cached features it "
                     "takes milliseconds); the setting applies to the phases that run Keras' fit",
                     config.validation_freq, phase.name)
        if not (state.phase == index and state.mid_phase):
            state.phase, state.phase_start = index, state.epoch
            deadline = deadline_of(self.deadline, phase.share)
        else:
            deadline = None if state.deadline is None else self.started + state.deadline
        model = inputs.model
        compile_model(model, make_optimizer(phase.optimizer, phase.lr, config.weight_decay), config)
        compile_model(inputs.full_model, model.optimizer, config)
        fit = fasthead.EpochFit(model, inputs.arrays, config.batch_size, config.seed, config.augment == "flip",
                                self.class_weight, config.label_smoothing)
        history = HistoryCSV(self.run.path(runs.HISTORY_FILE), phase.name, self.started)
        history.set_model(model)
        history.on_train_begin()
        watch = fasthead.Watch(config.monitor, config.patience, phase.lr,
                               None if config.lr_schedule == "plateau" else phase.epochs)
        board = []  # (epoch, logs, learning rate): for TensorBoard once the phase is backed up, at its end
        started, end, epoch = time.monotonic(), state.phase_start + phase.epochs, state.epoch - 1
        for epoch in range(state.epoch, end):
            model.optimizer.learning_rate = watch.lr(epoch - state.phase_start)
            logs = fit(epoch)
            if not all(map(math.isfinite, logs.values())):
                raise self._diverged(phase, "loss", epoch)
            history.on_epoch_end(epoch, logs)
            board.append((epoch, logs, learning_rate(model)))
            watch.epoch_end(epoch, logs, model)
            if self.stop.signum is not None:
                raise KeyboardInterrupt
            if deadline is not None and time.monotonic() >= deadline:
                state.timed_out.append(phase.name)
                log.info("--time-limit reached: this phase stops here")
                break
            if watch.stopped:
                break
        history.on_train_end()
        self._phase_end(index, phase, inputs, watch, epoch, time.monotonic() - started)
        for row in board:
            self.board.epoch(phase.name, *row)

    def _phase_end(self, index: int, phase: Phase, inputs: Inputs, watch: "fasthead.Watch", last: int,
                   seconds: float) -> None:
        """After a compiled phase: its best epoch into the checkpoint, the head at it, and the backup."""
        state, full = self.state, inputs.full_model
        epochs = last + 1 - state.epoch
        if watch.best_weights is not None:
            last_weights = inputs.model.get_weights()
            inputs.model.set_weights(watch.best_weights)
            if fasthead.better(self.config.monitor, watch.best, self.checkpoint.best):
                full.save_weights(self.checkpoint.filepath)
                self.checkpoint.best = watch.best
            if not self.config.restore_best:
                inputs.model.set_weights(last_weights)
            log.info("phase %s: %d epoch(s) in %.1f s (%.3f s each); best epoch %d, %s %.4f", phase.name, epochs,
                     seconds, seconds / max(1, epochs), watch.best_epoch + 1, self.config.monitor, watch.best)
        state.epoch, state.elapsed = last + 1, time.monotonic() - self.started
        state.phase, state.phase_start, state.deadline = index + 1, state.epoch, None
        state.best, state.laps, state.timer, state.watchers = self.checkpoint.best, dict(self.laps.seconds), {}, []
        resume.save(self.run, state, full, None)

    def epoch_done(self, backup: "_Backup", epoch: int) -> None:
        """Back the run up after ``epoch``: inside its phase, or, when the phase ends here, at the next one's start."""
        state = self.state
        over = backup.model.stop_training or epoch + 1 >= backup.end
        state.epoch, state.elapsed = epoch + 1, time.monotonic() - self.started
        state.best, state.laps = self.checkpoint.best, dict(self.laps.seconds)
        if backup.timer is not None and backup.timer.reached and backup.name not in state.timed_out:
            state.timed_out.append(backup.name)
        if over:
            state.phase, state.phase_start, state.deadline = backup.index + 1, state.epoch, None
            state.timer, state.watchers = {}, []
        else:
            timer = backup.timer
            state.timer = {} if timer is None else {"start": timer.start - self.started, "done": timer.done}
            state.watchers = [resume.counters(watcher) for watcher in backup.watchers]
        resume.save(self.run, state, backup.whole, None if over else backup.model.optimizer)


def _schedule(phase: Phase, config: TrainConfig, timer: TimeLimit | None, steps: int):
    """The learning rate (a number or a schedule) and the callbacks that watch validation (LR reduction, early
    stopping), in the order they run; their counters are what a backup keeps of them."""
    if config.lr_schedule == "cosine":  # over the phase's steps, or over its time (the timer sets it)
        schedule = phase.lr if timer else keras.optimizers.schedules.CosineDecay(phase.lr, decay_steps=steps)
        adapt = []
    else:
        schedule = phase.lr
        adapt = [keras.callbacks.ReduceLROnPlateau(monitor=config.monitor, mode=MONITOR_MODES[config.monitor], factor=0.2,
                                                   patience=max(1, config.patience // 2), min_lr=phase.lr / 100)]
    return schedule, adapt + [keras.callbacks.EarlyStopping(monitor=config.monitor, mode=MONITOR_MODES[config.monitor],
                                                            patience=config.patience)]


class _Backup(keras.callbacks.Callback):
    """The runner's hook into ``fit``: puts a resumed phase's optimizer and counters back when it starts (after
    Keras' callbacks reset theirs), and backs the run up at the end of each epoch (after every other callback)."""

    def __init__(self, runner: Runner, index: int, name: str, end: int, whole: keras.Model, watchers,
                 timer: TimeLimit | None, diverged: StopOnNaN, resumed: bool):
        super().__init__()
        self.runner, self.index, self.name, self.end, self.whole = runner, index, name, end, whole
        self.watchers, self.timer, self.diverged, self.resumed = watchers, timer, diverged, resumed

    def on_train_begin(self, logs=None):
        state = self.runner.state
        if not self.resumed:
            return
        resume.restore_phase(state, self.model, self.watchers)
        if self.timer is not None and state.timer:
            self.timer.start = self.runner.started + state.timer["start"]
            self.timer.done = int(state.timer["done"])
        log.info("resumed at epoch %d (phase %s)", state.epoch + 1, self.name)

    def on_epoch_end(self, epoch, logs=None):
        if not self.diverged.found:  # a diverged run is never resumed from
            self.runner.epoch_done(self, epoch)
            self.runner.board.epoch(self.name, epoch, logs or {}, learning_rate(self.model))
