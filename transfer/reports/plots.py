"""Plots written into run folders. matplotlib is imported here only, with the Agg backend (no display)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: a class name longer than this is cut (with an ellipsis) on the axes and under thumbnails
LABEL_CHARS = 24


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display), imported on first use: `transfer --help` stays fast."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: list[dict[str, Any]], path: str) -> None:
    """Learning curves (loss and accuracy, train and validation), with the start of fine-tuning marked."""
    plt = _pyplot()
    epochs = [int(row["epoch"]) + 1 for row in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [row[metric] for row in history], marker=".", label="train")
        validated = [(e, row[f"val_{metric}"]) for e, row in zip(epochs, history)]
        validated = [(e, value) for e, value in validated if not math.isnan(value)]  # --validation-freq
        ax.plot([e for e, _ in validated], [value for _, value in validated], marker=".", label="validation")
        for phase, style, what in (("fine_tune", "--", "fine-tuning starts"), ("deeper", ":", "deeper fine-tuning")):
            starts = [e for e, row in zip(epochs, history) if row["phase"] == phase]
            if starts and starts[0] > epochs[0]:
                ax.axvline(starts[0] - 0.5, color="gray", linestyle=style, label=what)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def short(label: str, chars: int = LABEL_CHARS) -> str:
    return label if len(label) <= chars else label[:chars - 1] + "\u2026"


def confusion_figure(matrix, labels: list[str]):
    """Counts and row-normalised (recall on the diagonal) side by side, class names on both axes.

    The figure grows with the classes up to a cap; past it only every n-th class
    is named, so that tick labels never overlap (with 2 classes or 200).
    """
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=np.float64)
    n = len(labels)
    font = 10 if n <= 10 else 8 if n <= 30 else 7
    panel = min(max(0.3 * n, 3.5), 14.0)  # inches per matrix
    step = math.ceil((font * 1.6 / 72) / (panel / n))  # a label's height (with spacing) in cells
    margin = max(len(short(label)) for label in labels) * font * 0.62 / 72 + 0.8
    fig, axes = plt.subplots(1, 2, figsize=(2 * panel + margin + 2.5, panel + margin + 0.6), layout="constrained")
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    ticks = list(range(0, n, step))
    names = [short(labels[i]) for i in ticks]
    for ax, values, title, fmt in ((axes[0], matrix, "counts", "{:.0f}"),
                                   (axes[1], normalised, "row-normalised (recall on the diagonal)", "{:.2f}")):
        image = ax.imshow(values, cmap="Blues", vmin=0, interpolation="nearest")
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set_title(title + (f" (one class in {step} named)" if step > 1 else ""), fontsize=font + 1)
        ax.set_xticks(ticks, names, rotation=90, fontsize=font)
        ax.set_yticks(ticks, names if ax is axes[0] else [""] * len(ticks), fontsize=font)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true" if ax is axes[0] else "")
        if n <= 12:
            _annotate(ax, values, fmt, font)
    return fig


def _annotate(ax, values: np.ndarray, fmt: str, font: int) -> None:
    """The value in each cell, white on dark cells."""
    top = values.max() or 1.0
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=font,
                color="white" if value > top / 2 else "black")


def plot_confusion(matrix, labels: list[str], path) -> None:
    """:func:`confusion_figure` saved as a PNG (``path``: a file name or a binary file object)."""
    fig = confusion_figure(matrix, labels)
    fig.savefig(path, dpi=100, format="png")
    _pyplot().close(fig)


def plot_top_losses(rows: list[dict[str, Any]], path, columns: int = 4, thumbnail: int = 160,
                    words: tuple[str, str] = ("true", "predicted")) -> None:
    """A grid of images (``rows``: path, true, predicted, probability, loss; worst first) with true / predicted /
    probability of the prediction under each; ``words`` names the two labels (doctor: given / suggested)."""
    from ..data.images import thumbnail_array

    plt = _pyplot()
    columns = max(1, min(columns, len(rows)))
    lines = math.ceil(len(rows) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(2.6 * columns, 3.1 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        ax.imshow(thumbnail_array(row["path"], thumbnail))
        ax.set_title(f"{words[0]}: {short(row['true'], 20)}\n{words[1]}: {short(row['predicted'], 20)}\n"
                     f"p={row['probability']:.3f}  loss={row['loss']:.2f}", fontsize=8,
                     color="black" if row["true"] == row["predicted"] else "firebrick")
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
