"""Classification metrics from predicted probabilities: numpy only, so any caller (training, evaluate) can use them.

Every value is a plain number: a class that is never predicted has precision 0
(and one that never occurs, recall 0), with a note saying so, never NaN and
never a warning. Averages follow scikit-learn: ``macro`` is the plain mean over
the classes that occur in the true labels or the predictions, ``weighted``
weighs each class by its support.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: probabilities are clipped to [EPSILON, 1] before the logarithm: one confident mistake costs ~16, not infinity
EPSILON = 1e-7


def top_k(classes: int) -> int:
    """k for top-k accuracy: 5, or fewer with fewer classes (k = classes would always be right)."""
    return max(1, min(5, classes - 1))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """Counts: row = true class, column = predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def losses(y_true: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each image's cross-entropy: -log of the probability given to its true class."""
    picked = probabilities[np.arange(len(y_true)), y_true]
    return -np.log(np.clip(picked, EPSILON, 1.0))


def classification_metrics(y_true, probabilities, labels: list[str]) -> dict[str, Any]:
    """Accuracy, top-k accuracy, log loss, per-class precision/recall/F1/support, macro and weighted averages and
    the confusion matrix, for integer ``y_true`` (n,) and ``probabilities`` (n, classes)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    _check(y_true, probabilities, labels)
    k = top_k(len(labels))
    y_pred = probabilities.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, len(labels))
    per_class, notes = _per_class(matrix, labels)
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return {
        "images": int(len(y_true)),
        "accuracy": float(np.mean(y_pred == y_true)),
        "top_k": k,
        "top_k_accuracy": float(np.mean(np.any(ranked == y_true[:, None], axis=1))),
        "log_loss": float(np.mean(losses(y_true, probabilities))),
        "per_class": per_class,
        "macro": _average(per_class, matrix, weighted=False),
        "weighted": _average(per_class, matrix, weighted=True),
        "labels": list(labels),
        "confusion_matrix": matrix.tolist(),
        "notes": notes,
    }


def _check(y_true: np.ndarray, probabilities: np.ndarray, labels: list[str]) -> None:
    if probabilities.ndim != 2 or probabilities.shape != (len(y_true), len(labels)):
        raise ValueError(f"expected probabilities of shape ({len(y_true)}, {len(labels)}); "
                         f"received: probabilities.shape={probabilities.shape}")
    if not len(y_true):
        raise ValueError("expected at least one image; received none")
    if y_true.min() < 0 or y_true.max() >= len(labels):
        raise ValueError(f"expected true labels in 0..{len(labels) - 1}; received: {sorted(set(y_true.tolist()))}")


def _per_class(matrix: np.ndarray, labels: list[str]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Precision, recall, F1 and support of each class; 0 (with a note) where a ratio would divide by zero."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)
    rows, notes = {}, []
    for i, label in enumerate(labels):
        precision = true_positive[i] / predicted[i] if predicted[i] else 0.0
        recall = true_positive[i] / support[i] if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows[label] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                       "support": int(support[i]), "predicted": int(predicted[i])}
        if not predicted[i]:
            notes.append(f"class {label!r} was never predicted: its precision is 0")
        if not support[i]:
            notes.append(f"class {label!r} has no images: its recall is 0")
    return rows, notes


def _average(per_class: dict[str, dict[str, float]], matrix: np.ndarray, weighted: bool) -> dict[str, float]:
    """Mean precision, recall and F1 over the classes that occur (as truth or prediction), plain or by support."""
    occurs = (matrix.sum(axis=0) + matrix.sum(axis=1)) > 0
    rows = [row for row, used in zip(per_class.values(), occurs) if used]
    weights = np.array([row["support"] for row in rows] if weighted else [1] * len(rows), dtype=np.float64)
    if not weights.sum():
        return {name: 0.0 for name in ("precision", "recall", "f1")}
    return {name: float(np.average([row[name] for row in rows], weights=weights))
            for name in ("precision", "recall", "f1")}
