"""Calibration of the positive score: expected calibration error and the reliability-diagram bins."""

from __future__ import annotations

import numpy as np


def reliability(y: np.ndarray, score: np.ndarray, bins: int = 10) -> dict[str, object]:
    """Equal-width bins over [0, 1]: mean score, observed positive rate and count per bin; ECE weighs the gaps."""
    y = np.asarray(y, dtype=float)
    score = np.clip(np.asarray(score, dtype=float), 0, 1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(score, edges[1:-1]), 0, bins - 1)
    mean_score, observed, counts = [], [], []
    ece = 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        counts.append(n)
        mean_score.append(float(score[mask].mean()) if n else float("nan"))
        observed.append(float(y[mask].mean()) if n else float("nan"))
        if n:
            ece += n / len(y) * abs(observed[-1] - mean_score[-1])
    return {
        "ece": float(ece),
        "edges": edges.tolist(),
        "mean_score": mean_score,
        "observed": observed,
        "counts": counts,
    }
