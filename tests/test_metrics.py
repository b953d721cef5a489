"""Classification metrics against hand-computed values, degenerate cases included."""

import numpy as np
import pytest

from llmjax.evaluation.metrics import classification_metrics, confusion_matrix


def test_binary_metrics_match_hand_computation():
    m = np.array([[5, 2], [1, 2]])  # rows: true 0/1; cols: predicted 0/1
    out = classification_metrics(m)
    assert out["accuracy"] == pytest.approx(0.7)
    assert out["precision"] == pytest.approx(2 / 4)
    assert out["recall"] == pytest.approx(2 / 3)
    assert out["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert out["mcc"] == pytest.approx((2 * 5 - 2 * 1) / np.sqrt(4 * 3 * 7 * 6))


def test_no_positive_predictions_is_zero_not_nan():
    out = classification_metrics(np.array([[6, 0], [4, 0]]))
    assert out == {"accuracy": pytest.approx(0.6), "precision": 0.0, "recall": 0.0, "f1": 0.0,
                   "mcc": 0.0}


def test_multiclass_uses_macro_averages_and_gorodkin_mcc():
    m = np.array([[3, 1, 0], [0, 2, 2], [1, 0, 1]])
    out = classification_metrics(m)
    assert out["accuracy"] == pytest.approx(0.6)
    assert out["precision"] == pytest.approx((3 / 4 + 2 / 3 + 1 / 3) / 3)
    assert out["recall"] == pytest.approx((3 / 4 + 2 / 4 + 1 / 2) / 3)
    assert out["f1"] == pytest.approx((0.75 + 4 / 7 + 0.4) / 3)
    assert out["mcc"] == pytest.approx(26 / (np.sqrt(66) * 8))


def test_confusion_matrix_counts_and_weights():
    m = confusion_matrix(np.array([0, 1, 1, 2]), np.array([0, 1, 2, 2]), 3,
                         weights=np.array([1, 1, 1, 0]))
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 1, 1], [0, 0, 0]])
