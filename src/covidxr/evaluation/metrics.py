"""Classification metrics at a threshold, as plain numbers (scikit-learn underneath)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, f1_score, roc_auc_score

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
        "roc_auc": float(roc_auc_score(y, score)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, score)) if both else float("nan"),
    }


def multiclass_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, object]:
    """Argmax predictions; per-class one-vs-rest metrics and their macro averages."""
    y = np.asarray(y).astype(int)
    pred = probs.argmax(axis=1)
    per_class = {}
    for k, name in enumerate(classes):
        one = binary_metrics((y == k).astype(int), probs[:, k], threshold=0.5)
        one["f1"] = float(f1_score(y == k, pred == k, zero_division=0))
        tp = np.sum((pred == k) & (y == k))
        one["precision"] = float(tp / max(np.sum(pred == k), 1))
        one["recall"] = float(tp / max(np.sum(y == k), 1))
        one["specificity"] = float(np.sum((pred != k) & (y != k)) / max(np.sum(y != k), 1))
        per_class[name] = one
    macro = {m: float(np.nanmean([per_class[c][m] for c in classes])) for m in BINARY_METRICS if m != "accuracy"}
    return {"accuracy": float(np.mean(pred == y)), **macro, "per_class": per_class}


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int) -> list[list[int]]:
    return confusion_matrix(y, pred, labels=list(range(n_classes))).tolist()
