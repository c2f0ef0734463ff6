"""Calibration: the run's temperature, threshold and TTA choice fitted on val and written once
(calibration.json); the expected calibration error and reliability-diagram bins that judge it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_expit, log_softmax

from covidxr.evaluation.threshold import choose_threshold
from covidxr.models.spec import ModelSpec
from covidxr.results import Reliability, RunCalibration
from covidxr.rundir import RunDir

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0  # the search's bounds; T < 1 only where validation shows a mistake


def reliability(y: np.ndarray, score: np.ndarray, bins: int = 10) -> Reliability:
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
    return Reliability(float(ece), edges.tolist(), mean_score, observed, counts)


def fit_temperature(logits: np.ndarray, y: np.ndarray, task: str) -> float:
    """Temperature scaling (Guo et al. 2017): the T > 0 minimising validation NLL of scores from logits / T.

    Binary (the study's head): the positive output's sigmoid; multiclass: softmax. Ranking, AUC and the
    argmax never change; only how far scores trust themselves does.

    When every validation image is already on its right side (sign of the positive logit, or argmax), the NLL
    falls towards 0 as T -> 0 and has no minimum: the fit would sharpen scores to the search's bound (T = 0.05
    squashed 1,711 external scores into 5 values). A split with no mistake is no evidence of under-confidence,
    so there T may only soften (T >= 1); sharpening needs a mistake on validation to be measured against.
    """
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y).astype(int)
    if len(y) == 0 or len(np.unique(y)) < 2:
        return 1.0

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        if task == "binary":
            return float(-np.mean(np.where(y == 1, log_expit(z[:, 1]), log_expit(-z[:, 1]))))
        return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(y)), y]))

    lowest = 1.0 if no_mistakes(logits, y, task) else MIN_TEMPERATURE
    best = minimize_scalar(nll, bounds=(np.log(lowest), np.log(MAX_TEMPERATURE)), method="bounded")
    return float(np.exp(best.x)) if nll(best.x) < nll(0.0) else 1.0


def no_mistakes(logits: np.ndarray, y: np.ndarray, task: str) -> bool:
    """Every row on its right side: the binary head's positive logit has the label's sign, else the argmax."""
    if task == "binary":
        return bool(np.all((logits[:, 1] > 0) == (y == 1)))
    return bool(np.all(logits.argmax(axis=1) == y))


def calibrate(run_dir: Path, spec: ModelSpec, val_logits: np.ndarray, val_targets: np.ndarray,
              threshold_method: str) -> ModelSpec:  # fmt: skip
    """Fit temperature, then the binary threshold on the calibrated val scores; write calibration.json (the one
    place they live; TTA as the spec has it, since the logits were scored with it) and return the spec using it."""
    temperature = fit_temperature(val_logits, val_targets, spec.task)
    threshold, method = 0.5, None
    if spec.task == "binary":
        scores = spec.with_calibration(temperature=temperature).scores(torch.from_numpy(val_logits)).numpy()
        threshold, method = choose_threshold(val_targets, scores[:, 1], threshold_method), threshold_method
    fitted = RunCalibration(temperature, threshold, method, spec.tta, "val")
    RunDir(run_dir).write_calibration(fitted)
    return replace(spec, calibration=fitted)
