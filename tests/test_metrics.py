"""transfer.metrics against values worked out by hand on a fixed set of six predictions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from transfer.reports.metrics import classification_metrics, confusion_matrix, top_k

LABELS = ["a", "b", "c"]
Y_TRUE = [0, 0, 0, 1, 1, 2]
PROBS = [[0.7, 0.2, 0.1],  # a -> a
         [0.6, 0.3, 0.1],  # a -> a
         [0.3, 0.5, 0.2],  # a -> b (a second: right in the top 2)
         [0.2, 0.7, 0.1],  # b -> b
         [0.5, 0.1, 0.4],  # b -> a (b last: wrong in the top 2)
         [0.1, 0.6, 0.3]]  # c -> b (c second); c is never predicted


@pytest.fixture(scope="module")
def m():
    with warnings.catch_warnings(), np.errstate(all="raise"):  # no division warnings, no NaN
        warnings.simplefilter("error")
        return classification_metrics(Y_TRUE, PROBS, LABELS)


def test_confusion_matrix_rows_are_true_classes(m):
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    assert m["labels"] == LABELS


def test_accuracy_top_k_and_log_loss(m):
    assert m["images"] == 6
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["top_k"] == 2  # min(5, 3 - 1)
    assert m["top_k_accuracy"] == pytest.approx(5 / 6)
    assert m["log_loss"] == pytest.approx(-(2 * math.log(0.7) + math.log(0.6) + 2 * math.log(0.3) + math.log(0.1)) / 6)


def test_per_class_precision_recall_f1_support(m):
    a, b, c = (m["per_class"][label] for label in LABELS)
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3, 3))
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == pytest.approx((1 / 3, 1 / 2, 2 / 5, 2))
    assert [a["predicted"], b["predicted"], c["predicted"]] == [3, 3, 0]


def test_a_class_never_predicted_has_precision_0_and_a_note(m):
    c = m["per_class"]["c"]
    assert (c["precision"], c["recall"], c["f1"], c["support"]) == (0.0, 0.0, 0.0, 1)
    assert m["notes"] == ["class 'c' was never predicted: its precision is 0"]


def test_macro_and_weighted_averages(m):
    assert m["macro"] == pytest.approx({"precision": 1 / 3, "recall": 7 / 18, "f1": 16 / 45})
    assert m["weighted"] == pytest.approx({"precision": 4 / 9, "recall": 1 / 2, "f1": 7 / 15})


def test_a_class_without_images_has_recall_0_and_is_left_out_of_the_macro_average():
    m = classification_metrics([0, 1], [[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]], LABELS)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 0}
    assert "class 'c' has no images: its recall is 0" in m["notes"]
    assert m["macro"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_two_classes_top_1_and_certain_mistakes_stay_finite():
    m = classification_metrics([0, 1], [[0.0, 1.0], [1.0, 0.0]], ["x", "y"])
    assert top_k(2) == 1 and m["top_k_accuracy"] == m["accuracy"] == 0.0
    assert m["log_loss"] == pytest.approx(-math.log(1e-7))


def test_confusion_matrix_counts_repeats():
    assert confusion_matrix(np.array([1, 1, 1]), np.array([0, 0, 1]), 2).tolist() == [[0, 0], [2, 1]]


@pytest.mark.parametrize("y_true, probs", [([0, 1], np.full((1, 3), 1 / 3)), ([0, 3], np.full((2, 3), 1 / 3)),
                                           ([], np.zeros((0, 3))), ([0], np.ones((1, 2)))])
def test_mismatched_input_is_a_clear_error(y_true, probs):
    with pytest.raises(ValueError, match="expected"):
        classification_metrics(y_true, probs, LABELS)
