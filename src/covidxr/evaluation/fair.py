"""External validation that hospitals cannot fool: AUC and rates within each source that holds both classes.

A COVID-19 film from hospital A ranked above a normal film from hospital B says as much about A and B as about
COVID-19: a model that learned the hospital wins that comparison without looking at a lung. Only pairs drawn from
one source measure the finding. The pooled within-source AUC is the share of such pairs ranked right (each
source's AUC weighted by its positive x negative pairs: a stratified Mann-Whitney U); sensitivity and specificity
are pooled over the same sources. A set where no source holds both classes cannot measure the finding at all.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from covidxr.evaluation.bootstrap import patient_bootstrap
from covidxr.results import FairScore, SourceAuc
from covidxr.training.metrics import roc_auc

CANNOT = "cannot measure the finding"
WITHIN = "within-source"
MIXED_NOTE = "measures the hospital as much as the finding"


def _pooled(y: np.ndarray, score: np.ndarray, called: np.ndarray, sources: np.ndarray) -> dict[str, float]:
    """Within-source AUC, sensitivity and specificity over the sources (of these rows) that hold both classes."""
    pairs = hits = tp = pos = tn = neg = 0.0
    for s in np.unique(sources):
        rows = sources == s
        n_pos, n_neg = int(y[rows].sum()), int((~y[rows]).sum())
        if n_pos and n_neg:
            pairs += n_pos * n_neg
            hits += roc_auc(y[rows], score[rows]) * n_pos * n_neg
            tp, pos = tp + called[rows & y].sum(), pos + n_pos
            tn, neg = tn + (~called[rows & ~y]).sum(), neg + n_neg
    nan = float("nan")
    return {"auc": hits / pairs if pairs else nan, "sensitivity": tp / pos if pos else nan,
            "specificity": tn / neg if neg else nan}  # fmt: skip


def fair_score(
    y: np.ndarray, score: np.ndarray, called: np.ndarray, sources: Sequence[str], groups: np.ndarray,
    n_resamples: int = 1000, seed: int = 0,
) -> FairScore:  # fmt: skip
    """y: positive (the audit class) or not; called: the run's decision says positive; sources: one per row."""
    y, called = np.asarray(y).astype(bool), np.asarray(called).astype(bool)
    score, src = np.asarray(score, dtype=float), np.asarray([s or "" for s in sources])
    per_source: dict[str, SourceAuc] = {}
    one_class: dict[str, str] = {}
    for s in sorted(set(src.tolist()) - {""}):  # a film naming no source cannot be paired within one
        rows = src == s
        n_pos, n_neg = int(y[rows].sum()), int((~y[rows]).sum())
        if n_pos and n_neg:
            part = _pooled(y[rows], score[rows], called[rows], src[rows])
            per_source[s] = SourceAuc(n_pos, n_neg, part["auc"], part["sensitivity"], part["specificity"])
        else:
            one_class[s] = "positive" if n_pos else "negative"
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    all_pairs = n_pos * n_neg
    within_pairs = sum(a.n_positive * a.n_negative for a in per_source.values())
    mixed = roc_auc(y, score) if all_pairs else None
    cross = 1 - within_pairs / all_pairs if all_pairs else 0.0
    if per_source:
        verdict = WITHIN
    elif "" in set(src.tolist()):
        verdict = f"{CANNOT} here: films name no source, so no pair is known to come from one hospital"
    else:
        verdict = f"{CANNOT}: no source holds both classes, so every AUC here compares sources (hospitals)"
    pooled = ci = sens = spec = None
    if per_source:
        known = src != ""
        full = _pooled(y[known], score[known], called[known], src[known])
        pooled, sens, spec = full["auc"], full["sensitivity"], full["specificity"]
        idx = np.flatnonzero(known)
        boot = patient_bootstrap(lambda i: _pooled(y[idx][i], score[idx][i], called[idx][i], src[idx][i]),
                                 np.asarray(groups)[idx], n_resamples, seed)  # fmt: skip
        ci = list(boot.get("auc", (float("nan"), float("nan"))))
    return FairScore(verdict, per_source, one_class, float(cross), pooled, ci, sens, spec, mixed)


def fair_summary(fair: FairScore) -> str:
    """The headline a user reads first: the within-source AUC, or why there is none."""
    mixed = f"{fair.mixed_auc:.3f}" if fair.mixed_auc is not None and fair.mixed_auc == fair.mixed_auc else "n/a"
    if fair.within_source_auc is None:
        return f"{fair.verdict}. Mixed-source AUC {mixed}: {MIXED_NOTE}, not a measure of the model."
    lo, hi = fair.within_source_ci95 or [float("nan")] * 2
    text = (
        f"within-source AUC {fair.within_source_auc:.3f} [{lo:.2f}, {hi:.2f}] over {len(fair.sources)} source(s) "
        f"holding both classes; sensitivity {fair.sensitivity:.3f}, specificity {fair.specificity:.3f} there"
    )
    if fair.cross_source_share > 0:
        text += (
            f". The mixed-source AUC ({mixed}) takes {fair.cross_source_share:.0%} of its pairs across sources: "
            f"it {MIXED_NOTE}"
        )
    return text
