"""Operating points chosen on the validation split only; the test split is never used to choose anything."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np

from covidxr.training.metrics import f1_from_counts

ThresholdMethod = Literal["f1", "youden"]
THRESHOLD_METHODS: tuple[str, ...] = get_args(ThresholdMethod)


def choose_threshold(y: np.ndarray, score: np.ndarray, method: str = "f1") -> float:
    """Max-F1 (default) or Youden's J threshold on validation predictions."""
    y = np.asarray(y).astype(int)
    score = np.asarray(score, dtype=float)
    if method == "youden":
        from sklearn.metrics import roc_curve  # here: the CLI imports this module for its choices only

        fpr, tpr, thresholds = roc_curve(y, score)
        best = int(np.argmax(tpr - fpr))
        return float(min(thresholds[best], 1.0))
    if method != "f1":
        raise ValueError(f"unknown threshold method {method!r}; use one of {THRESHOLD_METHODS}")
    values = np.unique(score)
    if len(values) < 2:
        return 0.5
    # Cut between observed scores, not on them, and take the middle of a run of equally good cuts: with
    # well-separated validation scores the max-F1 cut is a whole interval, and its edge would overfit.
    candidates = (values[:-1] + values[1:]) / 2
    f1 = np.array([_f1(y, score >= t) for t in candidates])
    tied = np.flatnonzero(f1 == f1.max())
    return float(candidates[tied[len(tied) // 2]])


def _f1(y: np.ndarray, pred: np.ndarray) -> float:
    positive = y == 1
    return f1_from_counts(int(np.sum(pred & positive)), int(np.sum(pred & ~positive)), int(np.sum(~pred & positive)))


def threshold_for_specificity(y: np.ndarray, score: np.ndarray, specificity: float = 0.95) -> float:
    """The threshold whose specificity on (validation) data is at least `specificity`, cut halfway to the next
    higher score: negatives tied with the k-th one all stay below it (never a cut inside a tie), and a cut
    midway between observed scores does not sit on the edge of the validation scores."""
    score = np.asarray(score, dtype=float)
    negatives = np.sort(score[np.asarray(y) == 0])
    if len(negatives) == 0:
        return 0.5
    k = int(np.ceil(specificity * len(negatives))) - 1
    at = negatives[min(k, len(negatives) - 1)]
    above = score[score > at]
    return float((at + above.min()) / 2) if len(above) else float(np.nextafter(at, np.inf))
