"""``--fine-tune auto``: a short probe after phase 1 decides, on this run's own validation images, whether
fine-tuning pays; once it has paid, a second probe decides whether fine-tuning deeper pays too.

Whether training the top of the backbone helps depends on the data (BENCHMARKS.md, "Fine-tuning when it
pays"), so it is measured, not assumed. The head's validation accuracy is taken first, on the same
validation inputs that phase 2 uses, and its weights are saved. The first :data:`PROBE_EPOCHS` epochs of phase 2
are the probe: when the best of them beats the head by more than the noise margin (:func:`margin`), phase 2
goes on to ``--fine-tune-epochs`` (a maximum: early stopping ends it) and nothing of the probe is lost.
Otherwise phase 2 stops there and the head's weights come back, as the model and as the best checkpoint: the
run ends as a head-only run would.

How deep to fine-tune is measured the same way, in gradual unfreezing's order: when phase 2 paid, a
``deeper`` phase starts from its best epoch, unfreezes the backbone from ``--deeper-unfreeze`` on, and its
first epochs are probed against phase 2's result; it goes on only when it beats that by the margin, or phase
2's weights come back.

Both phases are chosen by ``auto``, so both are bounded by default: they run within ``--time-limit``, or
without one within :data:`WITHIN` seconds of the run's start, so that a run on 2 cores ends inside ten minutes.

Each decision and its table are printed, saved in the run folder (``fine-tune-probe.json``,
``deeper-probe.json``, and config.json's ``fine_tune_probe``, ``deeper_probe``) and shown in report.html.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict
from typing import Any

import keras
import numpy as np

from .. import runs
from ..config import TrainConfig
from ..probe_record import DEEPER_STAGE, FINE_TUNE, FINE_TUNE_STAGE, HEAD_ONLY, HEADER, PROBING, SKIPPED, Record, load
from ..selection import aligned
from . import distribute
from .results import restore_best

log = logging.getLogger("transfer")

#: epochs of phase 2 that decide: on blood cells (Adam 1e-4) validation accuracy rose above the noise from the
#: third epoch on, not before (BENCHMARKS.md)
PROBE_EPOCHS = 3
#: fine-tuning is not probed where the head leaves fewer validation errors than this: on cats vs dogs (0.987) and
#: monkeys (0.991) it never paid, and a probe there costs more than the head's whole run (BENCHMARKS.md)
ROOM = 0.02
#: without --time-limit, the phases that --fine-tune auto decides on keep the run within this many seconds of its
#: start, so that a run on 2 cores ends within 10 minutes (the last for evaluating and saving); on blood cells (2000
#: photos) phases 1 and 2 take about 4 minutes and the deeper probe 1.5 more (BENCHMARKS.md)
WITHIN = {FINE_TUNE_STAGE: 540.0, DEEPER_STAGE: 540.0}
#: each stage's record file, config.json's key for it, and the file holding its baseline's weights while it runs
FILES = {FINE_TUNE_STAGE: (runs.FINE_TUNE_PROBE_FILE, "fine_tune_probe", runs.HEAD_WEIGHTS_FILE),
         DEEPER_STAGE: (runs.DEEPER_PROBE_FILE, "deeper_probe", runs.FINE_TUNED_WEIGHTS_FILE)}


def margin(accuracy: float, images: int) -> float:
    """The gain that counts as real: one standard error of an accuracy measured on ``images`` images, and at
    least one image. Both models are measured on the same images, so a smaller gain is within the noise."""
    return max(1 / images, math.sqrt(accuracy * (1 - accuracy) / images))


def evaluate(model: keras.Model, val_ds) -> tuple[float, float, int]:
    """(accuracy, cross-entropy, images) of ``model`` on ``val_ds``, without compiling it."""
    hits, loss, count = 0, 0.0, 0
    for x, y in val_ds:
        probabilities, y = np.asarray(model(x, training=False), np.float64), np.asarray(y)
        hits += int(np.sum(probabilities.argmax(-1) == y))
        loss -= float(np.sum(np.log(np.clip(probabilities[np.arange(len(y)), y], 1e-7, 1.0))))
        count += len(y)
    return hits / count, loss / count, count


class Probe(keras.callbacks.Callback):
    """A phase's first :data:`PROBE_EPOCHS` epochs against the model it started from: stops the phase when they do
    not pay."""

    def __init__(self, run: runs.RunFolder, record: Record, first_epoch: int, anyone=lambda said: said):
        super().__init__()
        self.run, self.record, self.first_epoch, self.started = run, record, first_epoch, time.monotonic()
        self.anyone, self.decided_at = anyone, None

    def on_epoch_end(self, epoch, logs=None):
        record = self.record
        if record.decision != PROBING or "val_accuracy" not in (logs or {}):
            return
        record.probe_epochs = epoch + 1 - self.first_epoch
        record.probe_accuracy = round(max(record.probe_accuracy or 0.0, float(logs["val_accuracy"])), 4)
        record.probe_seconds = round(record.probe_seconds + time.monotonic() - self.started, 1)
        self.started = time.monotonic()
        if record.probe_epochs < PROBE_EPOCHS:
            save(self.run, record)  # before the epoch's backup: a resumed probe counts this epoch's accuracy
            return
        self.decide()
        self.model.stop_training = record.decision != FINE_TUNE
        self.decided_at = epoch

    def tell(self, epoch: int) -> None:
        """Say the decision in the epoch it was taken, with what going on will cost: the table comes only when
        the phase ends, and fine-tuning may go on for minutes."""
        record = self.record
        if self.decided_at != epoch:
            return
        if record.decision != FINE_TUNE:
            log.info("--fine-tune auto: %s %s; phase %s stops here", record.what, record.note, _phase(record))
            return
        left = max(0, self.params.get("epochs", epoch + 1) - epoch - 1)
        log.info("--fine-tune auto: %s %s; up to %d more epoch(s) of about %.0f s each (early stopping may "
                 "end it sooner)", record.what, record.note, left, record.probe_seconds / max(1, record.probe_epochs))

    def decide(self) -> None:
        """Go on when the probe's best beats the model it started from by more than the margin; record and show why.

        On a cluster every worker measures the same numbers (validation runs on one device over the whole set), but
        the workers must not part ways on it: the phase goes on only if no worker finds that it does not pay."""
        record = self.record
        if record.decision != PROBING:
            return
        gain = (record.probe_accuracy or 0.0) - record.head_accuracy
        pays = not self.anyone(not (record.probe_accuracy is not None and gain > record.margin))
        record.decision = FINE_TUNE if pays else HEAD_ONLY
        kept = "the head's weights are kept" if record.stage == FINE_TUNE_STAGE else "fine-tuning's weights are kept"
        record.note = (f"{'pays' if pays else 'does not pay'}: {gain:+.4f} against a margin of {record.margin:.4f} "
                       f"({record.images} validation images)" + ("" if pays else f"; {kept}"))
        save(self.run, record)


def _phase(record: Record) -> str:
    return "2" if record.stage == FINE_TUNE_STAGE else "deeper"


class Told(keras.callbacks.Callback):
    """The probe's decision in the log after the line of the epoch that took it (the probe itself runs before the
    epoch's backup and its line)."""

    def __init__(self, probe: Probe):
        super().__init__()
        self.probe = probe

    def on_epoch_end(self, epoch, logs=None):
        self.probe.tell(epoch)


def start(run: runs.RunFolder, config: TrainConfig, stage: str, model: keras.Model, whole: keras.Model, val_ds,
          first_epoch: int, resumed: bool, anyone=lambda said: said) -> Probe | None:
    """The probe of a phase (``stage``: fine_tune or deeper) that starts now: the model it starts from measured and
    its weights saved. A resumed phase continues the probe it was in (None once it was decided). ``anyone(said)``:
    whether any worker of the cluster said so."""
    record_file, _, weights = FILES[stage]
    if resumed:
        record = load(run.path(record_file))
        return Probe(run, record, first_epoch, anyone) if record and record.decision == PROBING else None
    accuracy, loss, images = evaluate(distribute.local(model), val_ds)  # the whole set, as validation sees it
    record = _new(config, stage, head_accuracy=round(accuracy, 4), head_loss=round(loss, 4), images=images,
                  margin=round(margin(accuracy, images), 4))
    whole.save_weights(run.path(weights))
    save(run, record)
    log.info("--fine-tune auto: %s scores %.4f on validation; probing %d epoch(s) of %s from %s",
             f"fine-tuning from {record.baseline}" if record.baseline else "the head", accuracy, PROBE_EPOCHS,
             record.what, record.unfreeze)
    return Probe(run, record, first_epoch, anyone)


def _new(config: TrainConfig, stage: str, **fields) -> Record:
    """A record of ``stage``'s probe: phase 2's fine-tunes from --unfreeze, the deeper one from --deeper-unfreeze,
    starting where phase 2 ended."""
    if stage == DEEPER_STAGE:
        return Record(config.deeper_unfreeze, stage=stage, baseline=config.unfreeze, **fields)
    return Record(config.unfreeze, stage=stage, **fields)


def settle(probe: Probe, run: runs.RunFolder, whole: keras.Model, checkpoint, monitor: str) -> None:
    """After the phase: decide if it ended inside the probe; put the weights it started from back, as the model and
    the best checkpoint, unless it paid; show the table."""
    probe.decide()
    record, saved = probe.record, run.path(FILES[probe.record.stage][2])
    if record.decision != FINE_TUNE:
        restore_best(whole, saved)
        shutil.copyfile(saved, checkpoint.filepath)
        checkpoint.best = record.head_accuracy if "accuracy" in monitor else record.head_loss
    os.remove(saved)
    show(record)


def head_accuracy(history: list[dict[str, Any]], monitor: str) -> float | None:
    """Phase 1's validation accuracy at its best epoch on ``monitor`` (None: it validated no epoch)."""
    rows = [row for row in history if row["phase"] == "head" and not math.isnan(row[monitor])]
    if not rows:
        return None
    best = (min if monitor.endswith("loss") else max)(rows, key=lambda row: row[monitor])
    return float(best["val_accuracy"])


def skipped(run: runs.RunFolder, config: TrainConfig, why: str, accuracy: float | None = None,
            stage: str = FINE_TUNE_STAGE) -> None:
    """A probe left out (by the time budget, or for want of errors to fix): recorded like a decision."""
    record = _new(config, stage, decision=SKIPPED, head_accuracy=None if accuracy is None else round(accuracy, 4),
                  note=why)
    save(run, record)
    show(record)


def show(record: Record) -> None:
    for line in aligned(HEADER, record.rows()):
        log.info("  %s", line)
    log.info("--fine-tune auto: %s", record.outcome)


def save(run: runs.RunFolder, record: Record) -> None:
    """The stage's record file, and its key in config.json (the run's settings say what was decided)."""
    saved, (record_file, key, _) = asdict(record), FILES[record.stage]
    runs.write_json(run.path(record_file), saved)
    with open(run.path(runs.CONFIG_FILE), encoding="utf-8") as f:
        settings = json.load(f)
    runs.write_json(run.path(runs.CONFIG_FILE), {**settings, key: saved})


def kept_head(run: runs.RunFolder) -> bool:
    """Whether a probe ended with the head's weights (its phase 2, if any, was undone)."""
    record = load(run.path(runs.FINE_TUNE_PROBE_FILE))
    return record is not None and record.decision in (HEAD_ONLY, SKIPPED)


def fine_tuned(run: runs.RunFolder) -> bool:
    """Whether phase 2's probe paid: only then is the deeper phase probed."""
    record = load(run.path(runs.FINE_TUNE_PROBE_FILE))
    return record is not None and record.decision == FINE_TUNE
