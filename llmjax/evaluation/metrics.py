"""Task metrics from summed statistics. Classification, from a confusion matrix: accuracy,
precision, recall, F1, Matthews correlation; binary tasks score the positive class 1, more
classes use macro averages; degenerate cases follow scikit-learn's zero_division=0 (an undefined
ratio counts as 0). Regression, from summed moments: Pearson's r."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """[true class, predicted class] counts (weighted; weight 0 drops an example)."""
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    matrix = np.zeros((num_classes, num_classes), np.float64)
    np.add.at(matrix, (np.asarray(labels, int), np.asarray(predictions, int)), weights)
    return matrix


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def matthews_corrcoef(matrix: np.ndarray) -> float:
    """Multi-class MCC (Gorodkin 2004); equals the binary phi coefficient for 2 classes."""
    total = matrix.sum()
    correct = np.trace(matrix)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    num = correct * total - predicted @ actual
    den = np.sqrt(total**2 - predicted @ predicted) * np.sqrt(total**2 - actual @ actual)
    return float(num / den) if den > 0 else 0.0


def classification_metrics(matrix: np.ndarray) -> dict[str, float]:
    """{accuracy, precision, recall, f1, mcc} from a confusion matrix."""
    tp = np.diag(matrix)
    precision = _ratio(tp, matrix.sum(axis=0))
    recall = _ratio(tp, matrix.sum(axis=1))
    f1 = _ratio(2 * precision * recall, precision + recall)
    if len(matrix) == 2:  # binary: the positive class
        p, r, f = precision[1], recall[1], f1[1]
    else:
        p, r, f = precision.mean(), recall.mean(), f1.mean()
    return {"accuracy": float(_ratio(np.trace(matrix), matrix.sum())), "precision": float(p),
            "recall": float(r), "f1": float(f), "mcc": matthews_corrcoef(matrix)}


def pearson_from_moments(moments: np.ndarray) -> float:
    """Pearson's r from weighted [n, sum x, sum y, sum xx, sum yy, sum xy]; 0 when either side
    is constant."""
    n, sx, sy, sxx, syy, sxy = np.asarray(moments, np.float64)
    cov = n * sxy - sx * sy
    var_x, var_y = n * sxx - sx * sx, n * syy - sy * sy
    return float(cov / np.sqrt(var_x * var_y)) if var_x > 0 and var_y > 0 else 0.0
