"""--resume: a run's full state after each finished epoch, backed up in its partial folder, and put back.

After every epoch the runner writes a backup (a folder that
:meth:`transfer.runs.RunFolder.new_backup` makes): the full model's weights,
the optimizer's variables (its slots, step count and learning rate, so a
schedule continues where it was), a copy of the best checkpoint so far and
``state.json``: the phase and epoch, the early-stopping and LR-reduction
counters, the time already spent against ``--time-limit``. ``state.json`` is
written last, so a backup that a kill cut short is ignored and the one before
it is used.

A resumed run (``transfer train ... --name NAME --resume``) takes its settings
from the partial run's config.json (:func:`transfer.preflight.resumed`), reads
the newest complete backup (:func:`load`), puts history.csv, the checkpoint and
the weights back to that epoch (:func:`restore_run`), skips the finished
phases and, when its phase starts, the optimizer and counters
(:func:`restore_phase`). Feature caches are keyed by content, so they are
read, not recomputed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from .. import runs
from ..errors import RunError, first_line

#: the attributes of Keras' EarlyStopping, ReduceLROnPlateau and ModelCheckpoint that carry over between epochs
COUNTERS = ("wait", "best", "cooldown_counter", "stopped_epoch", "best_epoch")


@dataclass
class State:
    """Where a run stands after an epoch: what a resumed run needs besides the weights and the optimizer."""

    phase: int = 0  # index of the phase to run next or to continue (all done: the number of phases)
    epoch: int = 0  # the next epoch, counted over the whole run
    phase_start: int = 0  # the first epoch of that phase
    elapsed: float = 0.0  # seconds of the run so far (--time-limit; history's elapsed_seconds)
    deadline: float | None = None  # the phase's --time-limit deadline, in seconds from the run's start
    timer: dict[str, float] = field(default_factory=dict)  # the phase's time limit: its start and steps done
    watchers: list[dict[str, Any]] = field(default_factory=list)  # early stopping and LR reduction, in order
    best: float | None = None  # the best checkpoint's monitored value
    timed_out: list[str] = field(default_factory=list)  # the phases that --time-limit ended
    laps: dict[str, float] = field(default_factory=dict)  # seconds per stage, for metrics.json
    folder: str | None = field(default=None, compare=False)  # the backup it was read from

    @property
    def mid_phase(self) -> bool:
        """Whether the run stopped inside a phase, whose optimizer and counters then come back too."""
        return self.epoch > self.phase_start


def load(run: runs.RunFolder) -> State:
    """The state of the newest complete backup of a partial run (RunFolder checked that there is one)."""
    folder = run.latest_backup()
    try:
        with open(os.path.join(folder, runs.STATE_FILE), encoding="utf-8") as f:
            return State(**json.load(f), folder=folder)
    except (OSError, ValueError, TypeError) as error:
        raise _damaged(os.path.join(folder, runs.STATE_FILE), error) from None


def _damaged(path: str, error: BaseException) -> RunError:
    """A backup cut short or edited: the run cannot continue from it (older backups are not kept)."""
    return RunError(f"--resume: the backup file {path!r} is damaged ({first_line(error)}), so the run cannot be "
                    "continued; start it again with --overwrite.")


def save(run: runs.RunFolder, state: State, model: keras.Model, optimizer: keras.optimizers.Optimizer | None) -> None:
    """Back up ``state`` with the full model's weights, ``optimizer`` (None between phases) and the checkpoint."""
    folder = run.new_backup(state.epoch)
    _save_arrays(os.path.join(folder, runs.WEIGHTS_FILE), model.weights)  # in an order that trainable leaves alone
    if optimizer is not None:
        _save_arrays(os.path.join(folder, runs.OPTIMIZER_FILE), optimizer.variables)
    if os.path.exists(run.path(runs.CHECKPOINT_FILE)):
        shutil.copyfile(run.path(runs.CHECKPOINT_FILE), os.path.join(folder, runs.CHECKPOINT_FILE))
    values = {k: v for k, v in dataclasses.asdict(state).items() if k != "folder"}
    runs.write_text(os.path.join(folder, runs.STATE_FILE), json.dumps(values))  # last: the backup is complete
    run.keep_backup(folder)


def check_labels(run: runs.RunFolder, classes: list[str]) -> None:
    """A resumed run must see the classes it started with (its head has one output per class)."""
    with open(run.path(runs.LABELS_FILE), encoding="utf-8") as f:
        started = f.read().splitlines()
    if started != classes:
        raise RunError(f"--resume: the classes in DATA_DIR ({', '.join(classes)}) are not those the run {run.name!r} "
                       f"started with ({', '.join(started)}); restore the dataset, or start again with --overwrite.")


def restore_run(run: runs.RunFolder, state: State, model: keras.Model) -> None:
    """Put the weights, the best checkpoint and history.csv back to the backup: what an epoch that did not
    finish wrote after it is undone, so that each epoch is in the history once."""
    _load_arrays(os.path.join(state.folder, runs.WEIGHTS_FILE), model.weights)
    best = os.path.join(state.folder, runs.CHECKPOINT_FILE)
    if os.path.exists(best):
        _check_checkpoint(best)
        shutil.copyfile(best, run.path(runs.CHECKPOINT_FILE))
    elif os.path.exists(run.path(runs.CHECKPOINT_FILE)):
        os.remove(run.path(runs.CHECKPOINT_FILE))
    _truncate_history(run.path(runs.HISTORY_FILE), state.epoch)


def _check_checkpoint(path: str) -> None:
    """The best checkpoint is read only when training ends: a damaged one is found now, not after every epoch."""
    import h5py

    try:
        with h5py.File(path, "r"):
            pass
    except (OSError, ValueError) as error:
        raise _damaged(path, error) from None


def _save_arrays(path: str, variables) -> None:
    """Variables' values as one .npz, in order (several times faster than Keras' .weights.h5 for a real backbone:
    benchmarks/bench_resume.py)."""
    np.savez(path, *[keras.ops.convert_to_numpy(v) for v in variables])


def _load_arrays(path: str, variables) -> None:
    """The values :func:`_save_arrays` wrote back into ``variables``; a truncated or foreign file is a RunError."""
    try:
        with np.load(path) as saved:
            values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise _damaged(path, error) from None


def _truncate_history(path: str, epochs: int) -> None:
    """Keep the header and the complete rows of the first ``epochs`` epochs (a kill may cut a row in half)."""
    if not os.path.exists(path):
        return
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    header, column = rows[0], rows[0].index("epoch")
    kept = [row for row in rows[1:] if len(row) == len(header) and row[column].isdigit() and int(row[column]) < epochs]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header, *kept])
    runs.write_text(path, text.getvalue())


def counters(callback: keras.callbacks.Callback) -> dict[str, Any]:
    """What a Keras callback carries from epoch to epoch, as JSON values."""
    values = {name: getattr(callback, name) for name in COUNTERS if hasattr(callback, name)}
    return {name: value if value is None or isinstance(value, int) else float(value) for name, value in values.items()}


def restore_phase(state: State, model: keras.Model, watchers: list[keras.callbacks.Callback]) -> None:
    """At the start of a resumed phase (after Keras' ``on_train_begin`` reset them): the optimizer's variables
    and the counters of early stopping and LR reduction, as they were after the backed-up epoch."""
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    _load_arrays(os.path.join(state.folder, runs.OPTIMIZER_FILE), optimizer.variables)
    for watcher, values in zip(watchers, state.watchers, strict=True):
        for name, value in values.items():
            setattr(watcher, name, value)
