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
HEADER = ["model", "unfreeze", "epochs", "val accuracy", "seconds", "chosen", "note"]


@dataclass
class Record:
    """The head's validation accuracy, the probe's best, and what was decided (``note`` says why)."""

    unfreeze: str
    decision: str = PROBING
    head_accuracy: float | None = None
    head_loss: float | None = None
    images: int = 0  # validation images both were measured on
    margin: float | None = None
    probe_epochs: int = 0
    probe_accuracy: float | None = None
    probe_seconds: float = 0.0
    note: str = ""

    def rows(self) -> list[list[str]]:
        """The table: the head alone, and fine-tuning from ``unfreeze`` as far as the probe went."""
        head = ["head only", "-", "-", _number(self.head_accuracy), "-", "yes" if self.decision != FINE_TUNE else "", ""]
        probe = ["fine-tuned", self.unfreeze, str(self.probe_epochs), _number(self.probe_accuracy),
                 f"{self.probe_seconds:.1f}", "yes" if self.decision == FINE_TUNE else "", self.note]
        return [head, probe]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"



def load(path: str) -> Record | None:
    """The record saved at ``path`` (None: the run did not probe)."""
    try:
        with open(path, encoding="utf-8") as f:
            return Record(**json.load(f))
    except FileNotFoundError:
        return None


def report_table(path: str) -> list[tuple[str, list[str], list[list[Any]]]]:
    """report.html's table of the decision saved at ``path`` (none without --fine-tune auto)."""
    record = load(path)
    return [] if record is None else [(f"Fine-tuning (--fine-tune auto: {record.decision})", HEADER, record.rows())]
