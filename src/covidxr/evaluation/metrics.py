"""Classification metrics at a threshold, as plain numbers.

ROC-AUC and average precision are computed here in numpy, to scikit-learn's definitions (the tests hold them
to it, ties included): a patient bootstrap calls them thousands of times, and scikit-learn's input checks cost
more than the arithmetic on a few hundred scores.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import confusion_matrix

from covidxr.training.metrics import f1_from_counts, roc_auc

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
        "f1": f1_from_counts(tp, fp, fn),
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


@dataclass
class MulticlassMetrics:
    macro: dict[str, float]  # accuracy, and the per-class rows' macro averages
    per_class: dict[str, dict[str, float]]  # one-vs-rest, every row at the argmax decision


def multiclass_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> MulticlassMetrics:
    """Argmax predictions; per-class one-vs-rest metrics (counts from the argmax, AUCs from the class score)
    and their macro averages."""
    y = np.asarray(y).astype(int)
    pred = probs.argmax(axis=1)
    per_class = {}
    for k, name in enumerate(classes):
        one = binary_metrics((y == k).astype(int), (pred == k).astype(float), threshold=0.5)
        aucs = binary_metrics((y == k).astype(int), probs[:, k], threshold=0.5)
        per_class[name] = one | {"roc_auc": aucs["roc_auc"], "pr_auc": aucs["pr_auc"]}
    with warnings.catch_warnings():  # a class absent from a bootstrap resample: its AUC is NaN, and so the mean
        warnings.simplefilter("ignore", RuntimeWarning)
        macro = {m: float(np.nanmean([per_class[c][m] for c in classes])) for m in BINARY_METRICS if m != "accuracy"}
    return MulticlassMetrics({"accuracy": float(np.mean(pred == y)), **macro}, per_class)


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    return confusion_matrix(y, pred, labels=list(range(n_classes))).tolist()
