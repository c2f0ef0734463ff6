"""Confidence intervals by bootstrap over patients: images of one patient are not independent evidence."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def patient_bootstrap(
    metric: Callable[[np.ndarray], dict[str, float]],
    groups: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Resample groups (patients) with replacement; `metric(indices)` computes metrics on those rows.

    Returns a percentile interval per metric; resamples where a metric is undefined (NaN) are left out.
    """
    groups = np.asarray(groups)
    unique, inverse = np.unique(groups, return_inverse=True)
    rows = np.arange(len(groups))
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_resamples):
        chosen = rng.integers(0, len(unique), len(unique))
        # Each row as often as its patient was drawn: the rows of the drawn patients, in row order (every metric
        # here is a function of the multiset of rows), in time linear in the rows rather than the patients.
        idx = np.repeat(rows, np.bincount(chosen, minlength=len(unique))[inverse])
        for name, value in metric(idx).items():
            samples.setdefault(name, []).append(value)
    tail = (1 - level) / 2 * 100
    out = {}
    for name, values in samples.items():
        arr = np.asarray(values, dtype=float)
        arr = arr[~np.isnan(arr)]
        out[name] = (
            (float(np.percentile(arr, tail)), float(np.percentile(arr, 100 - tail)))
            if len(arr)
            else (
                float("nan"),
                float("nan"),
            )
        )
    return out
