"""Epoch metrics from collected outputs: pure functions, arrays in, numbers out."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score


def scores_to_predictions(scores: np.ndarray, task: str, threshold: float = 0.5) -> np.ndarray:
    """Binary: positive score (column 1) at the threshold; multiclass: argmax."""
    if task == "binary":
        return (scores[:, 1] >= threshold).astype(int)
    return scores.argmax(axis=1)


def epoch_metrics(scores: np.ndarray, targets: np.ndarray, task: str) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (macro for multiclass) and ROC-AUC (one-vs-rest macro); AUC is NaN with
    one class present."""
    preds = scores_to_predictions(scores, task)
    out = {"acc": float(accuracy_score(targets, preds))}
    average = "binary" if task == "binary" else "macro"
    out["precision"] = float(precision_score(targets, preds, average=average, zero_division=0))
    out["recall"] = float(recall_score(targets, preds, average=average, zero_division=0))
    if task == "binary":
        out["f1"] = float(f1_score(targets, preds, zero_division=0))
        out["auc"] = float(roc_auc_score(targets, scores[:, 1])) if len(np.unique(targets)) > 1 else float("nan")
    else:
        out["f1"] = float(f1_score(targets, preds, average="macro", zero_division=0))
        present = np.unique(targets)
        if len(present) == scores.shape[1]:
            probs = scores / scores.sum(axis=1, keepdims=True)
            out["auc"] = float(roc_auc_score(targets, probs, multi_class="ovr", average="macro"))
        else:
            out["auc"] = float("nan")
    return out
