"""Epoch metrics from collected outputs: pure functions, arrays in, numbers out.

Plain numpy to scikit-learn's definitions (zero division counts 0; macro averages over the classes present in
targets or predictions; AUC one-vs-rest, macro), held to them by the tests: they run after every epoch, and
scikit-learn's input checks cost more than a short head-training epoch.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos * n_neg), ties counted half (= sklearn's roc_auc_score)."""
    y = np.asarray(y).astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def scores_to_predictions(scores: np.ndarray, task: str, threshold: float = 0.5) -> np.ndarray:
    """Binary: positive score (column 1) at the threshold; multiclass: argmax."""
    if task == "binary":
        return (scores[:, 1] >= threshold).astype(int)
    return scores.argmax(axis=1)


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    """F1 = 2TP / (2TP + FP + FN); 0 when there is nothing to find and nothing was called (the one F1 here)."""
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def _precision_recall_f1(targets: np.ndarray, preds: np.ndarray, k: int) -> tuple[float, float, float]:
    tp = int(np.sum((preds == k) & (targets == k)))
    fp = int(np.sum((preds == k) & (targets != k)))
    fn = int(np.sum((preds != k) & (targets == k)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return precision, recall, f1_from_counts(tp, fp, fn)


def epoch_metrics(scores: np.ndarray, targets: np.ndarray, task: str) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (macro for multiclass) and ROC-AUC (one-vs-rest macro); AUC is NaN with
    one class present."""
    targets = np.asarray(targets).astype(int)
    preds = scores_to_predictions(scores, task)
    out = {"acc": float(np.mean(preds == targets)) if len(targets) else float("nan")}
    if task == "binary":
        p, r, f = _precision_recall_f1(targets, preds, 1)
        auc = roc_auc(targets, scores[:, 1]) if len(np.unique(targets)) > 1 else float("nan")
    else:
        rows = [_precision_recall_f1(targets, preds, k) for k in np.unique(np.concatenate([targets, preds]))]
        p, r, f = (float(np.mean(column)) for column in zip(*rows, strict=True))
        present = np.unique(targets)
        if len(present) == scores.shape[1]:
            probs = scores / scores.sum(axis=1, keepdims=True)
            auc = float(np.mean([roc_auc(targets == k, probs[:, k]) for k in range(scores.shape[1])]))
        else:
            auc = float("nan")
    return out | {"precision": float(p), "recall": float(r), "f1": float(f), "auc": float(auc)}
