"""``--fine-tune auto``'s record: what the probe measured and decided, as saved in the run folder.

Written by :mod:`transfer.training.probe`, read back there on ``--resume`` and by report.html
(:mod:`transfer.reports.evaluate`). It imports no TensorFlow, so that reports need not import training, as
:mod:`transfer.selection` is for ``--backbone auto``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PROBING, FINE_TUNE, HEAD_ONLY, SKIPPED = "probing", "fine-tune", "head only", "skipped"
FINE_TUNE_STAGE, DEEPER_STAGE = "fine_tune", "deeper"  # the phases a probe decides (history.csv's names)
HEADER = ["model", "unfreeze", "epochs", "val accuracy", "seconds", "chosen", "note"]


@dataclass
class Record:
    """The model the probe starts from (``baseline``: the head; or, for the deeper stage, fine-tuning from
    ``baseline`` itself), its validation accuracy, the probe's best, and what was decided (``note`` says why)."""

    unfreeze: str
    decision: str = PROBING
    head_accuracy: float | None = None  # the baseline's (the head's, for phase 2)
    head_loss: float | None = None
    images: int = 0  # validation images both were measured on
    margin: float | None = None
    probe_epochs: int = 0
    probe_accuracy: float | None = None
    probe_seconds: float = 0.0
    note: str = ""
    stage: str = FINE_TUNE_STAGE  # history.csv's phase that the probe decides: fine_tune, or deeper
    baseline: str = ""  # the deeper stage's: where the fine-tuning it starts from starts

    @property
    def what(self) -> str:
        return "deeper fine-tuning" if self.stage == DEEPER_STAGE else "fine-tuning"

    @property
    def outcome(self) -> str:
        """The decision in words: for the deeper stage, whether the run went deeper."""
        if self.stage != DEEPER_STAGE or self.decision in (PROBING, SKIPPED):
            return self.decision
        return "deeper" if self.decision == FINE_TUNE else "not deeper"

    def rows(self) -> list[list[str]]:
        """The table: the model the probe starts from, and fine-tuning from ``unfreeze`` as far as the probe went."""
        kept, went = self.decision != FINE_TUNE, self.decision == FINE_TUNE
        if self.stage == DEEPER_STAGE:
            start = ["fine-tuned", self.baseline, "-", _number(self.head_accuracy), "-", "yes" if kept else "", ""]
        else:
            start = ["head only", "-", "-", _number(self.head_accuracy), "-", "yes" if kept else "", ""]
        probe = ["fine-tuned deeper" if self.stage == DEEPER_STAGE else "fine-tuned", self.unfreeze,
                 str(self.probe_epochs), _number(self.probe_accuracy), f"{self.probe_seconds:.1f}",
                 "yes" if went else "", self.note]
        return [start, probe]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def load(path: str) -> Record | None:
    """The record saved at ``path`` (None: the run did not probe)."""
    try:
        with open(path, encoding="utf-8") as f:
            return Record(**json.load(f))
    except FileNotFoundError:
        return None


def report_table(*paths: str) -> list[tuple[str, list[str], list[list[Any]]]]:
    """report.html's tables of the decisions saved at ``paths`` (none without --fine-tune auto)."""
    records = [record for record in map(load, paths) if record is not None]
    return [(f"{record.what.capitalize()} (--fine-tune auto: {record.outcome})", HEADER, record.rows())
            for record in records]
