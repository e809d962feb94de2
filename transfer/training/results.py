"""A run's results after its last phase: back to the best epoch, the final metrics and probabilities, history.csv read
back and plotted."""

from __future__ import annotations

import csv
import logging
import math
import os
import warnings
from typing import Any

import keras
import numpy as np

from .. import data, features, runs
from ..config import TrainConfig

log = logging.getLogger("transfer")


def restore_best(model, checkpoint_path: str) -> None:
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


def evaluate(model, config: TrainConfig, dataset: data.Dataset, history: list[dict[str, Any]], seconds: float,
             cache: features.FeatureCache | None, val_ds) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Final metrics, and the probabilities of each evaluated split (which the report reuses: one pass, not two).

    The loss is the run's own (label smoothing included), as in history.csv.
    """
    loss = keras.losses.get(model.loss) if isinstance(model.loss, str) else model.loss  # compiled by the last phase
    metrics: dict[str, Any] = {}
    probabilities = {}
    for split in ("val", "test"):
        if split in dataset.splits:
            probs = probabilities[split] = _probabilities(model, config, dataset, split, val_ds, cache)
            labels = np.array([e.label for e in dataset.splits[split]], dtype=np.int32)
            metrics[split] = {"loss": float(keras.ops.mean(loss(labels, probs))),
                              "accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
                              "images": len(labels)}
    best = min if config.monitor.endswith("loss") else max
    validated = [row for row in history if not math.isnan(row[config.monitor])] or history[-1:]
    best_row = best(validated, key=lambda row: row[config.monitor])
    metrics.update({
        "monitor": config.monitor,
        "best_epoch": int(best_row["epoch"]) + 1,
        "best_phase": best_row["phase"],
        "epochs": _epochs(history),
        "train_seconds": round(seconds, 2),
    })
    return metrics, probabilities


def _epochs(history: list[dict[str, Any]]) -> dict[str, int]:
    """Epochs per phase: head and fine_tune always, deeper where --fine-tune auto trained it."""
    epochs = {phase: sum(r["phase"] == phase for r in history) for phase in runs.PHASES}
    return {phase: n for phase, n in epochs.items() if n or phase != "deeper"}


def _probabilities(model, config: TrainConfig, dataset: data.Dataset, split: str, val_ds,
                   cache: features.FeatureCache | None) -> np.ndarray:
    """The trained model's probabilities on a split. Validation reuses its pipeline (decoded images already in
    memory); given the cache (the caller's promise that the backbone never changed), the head runs on the features
    (with ``--tta``, on the mirror images' too): the same model, without another pass of the backbone."""
    examples = dataset.splits[split]
    if cache is not None and cache.ready:
        return cache.top.predict(cache.dataset(examples, pick="all" if config.tta else "first"), verbose=0)
    images = val_ds if split == "val" else data.make_tf_dataset(
        examples, config.image_size, config.batch_size, resize=config.resize, cache=False, max_pixels=config.max_pixels)
    return np.asarray(model.predict(images, verbose=0))


def plot(history, path) -> None:
    from ..reports.plots import plot_history

    plot_history(history, path)
