"""After the last phase: back to the best epoch, the final metrics, history.csv read back and plotted."""

from __future__ import annotations

import csv
import logging
import math
import os
import warnings
from typing import Any

from .. import data, features
from ..config import TrainConfig
from . import distribute

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
             cache: features.FeatureCache | None, val_ds) -> dict[str, Any]:
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
            results = distribute.evaluate(evaluated, pipeline(split))
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


def plot(history, path) -> None:
    from ..plots import plot_history

    plot_history(history, path)
