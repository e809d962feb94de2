"""Plots written into run folders. matplotlib is imported here only, with the Agg backend (no display)."""

from __future__ import annotations

import math
from typing import Any


def plot_history(history: list[dict[str, Any]], path: str) -> None:
    """Learning curves (loss and accuracy, train and validation), with the start of fine-tuning marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(row["epoch"]) + 1 for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [row[metric] for row in history], marker=".", label="train")
        validated = [(e, row[f"val_{metric}"]) for e, row in zip(epochs, history)]
        validated = [(e, value) for e, value in validated if not math.isnan(value)]  # --validation-freq
        ax.plot([e for e, _ in validated], [value for _, value in validated], marker=".", label="validation")
        fine_tune = [e for e, row in zip(epochs, history) if row["phase"] == "fine_tune"]
        if fine_tune and fine_tune[0] > epochs[0]:
            ax.axvline(fine_tune[0] - 0.5, color="gray", linestyle="--", label="fine-tuning starts")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
