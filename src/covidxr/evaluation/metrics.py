"""Classification metrics at a threshold, as plain numbers.

ROC-AUC and average precision are computed here in numpy, to scikit-learn's definitions (the tests hold them
to it, ties included): a patient bootstrap calls them thousands of times, and scikit-learn's input checks cost
more than the arithmetic on a few hundred scores.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import confusion_matrix

from covidxr.training.metrics import roc_auc

BINARY_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "roc_auc", "pr_auc")


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """y in {0, 1}; score = positive-class score. Threshold-free AUCs are NaN when one class is absent."""
    y = np.asarray(y).astype(int)
    pred = (np.asarray(score) >= threshold).astype(int)
    tp = int(np.sum((pred == 1) & (y == 1)))
    tn = int(np.sum((pred == 0) & (y == 0)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    fn = int(np.sum((pred == 0) & (y == 1)))
    both = len(np.unique(y)) == 2
    return {
        "accuracy": (tp + tn) / max(len(y), 1),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else float("nan"),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "roc_auc": roc_auc(y, score) if both else float("nan"),
        "pr_auc": average_precision(y, score) if both else float("nan"),
    }


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """Sum over distinct thresholds of precision x recall step (= sklearn's average_precision_score)."""
    y = np.asarray(y).astype(int)
    order = np.argsort(-np.asarray(score, dtype=float), kind="mergesort")
    s, t = np.asarray(score, dtype=float)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tps = np.cumsum(t)[last]
    if tps[-1] == 0:
        return float("nan")
    precision = tps / (last + 1)
    recall_step = np.diff(np.r_[0, tps]) / tps[-1]
    return float(np.sum(recall_step * precision))


def multiclass_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, object]:
    """Argmax predictions; per-class one-vs-rest metrics and their macro averages."""
    y = np.asarray(y).astype(int)
    pred = probs.argmax(axis=1)
    per_class = {}
    for k, name in enumerate(classes):
        one = binary_metrics((y == k).astype(int), probs[:, k], threshold=0.5)
        tp = np.sum((pred == k) & (y == k))
        denominator = np.sum(pred == k) + np.sum(y == k)
        one["f1"] = float(2 * tp / denominator) if denominator else 0.0
        one["precision"] = float(tp / max(np.sum(pred == k), 1))
        one["recall"] = float(tp / max(np.sum(y == k), 1))
        one["specificity"] = float(np.sum((pred != k) & (y != k)) / max(np.sum(y != k), 1))
        per_class[name] = one
    with warnings.catch_warnings():  # a class absent from a bootstrap resample: its AUC is NaN, and so the mean
        warnings.simplefilter("ignore", RuntimeWarning)
        macro = {m: float(np.nanmean([per_class[c][m] for c in classes])) for m in BINARY_METRICS if m != "accuracy"}
    return {"accuracy": float(np.mean(pred == y)), **macro, "per_class": per_class}


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    return confusion_matrix(y, pred, labels=list(range(n_classes))).tolist()
