"""Metrics agree with scikit-learn; patient bootstrap is honest about clustering; thresholds come from val."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from covidxr.evaluation.bootstrap import patient_bootstrap
from covidxr.evaluation.calibration import reliability
from covidxr.evaluation.metrics import binary_metrics, multiclass_metrics
from covidxr.evaluation.threshold import choose_threshold, threshold_for_specificity


@pytest.mark.parametrize("seed", range(5))
def test_binary_metrics_agree_with_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    score = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    t = float(rng.uniform(0.3, 0.7))
    pred = (score >= t).astype(int)
    ours = binary_metrics(y, score, t)
    assert ours["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert ours["precision"] == pytest.approx(skm.precision_score(y, pred, zero_division=0))
    assert ours["recall"] == pytest.approx(skm.recall_score(y, pred))
    assert ours["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert ours["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert ours["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score))
    assert ours["pr_auc"] == pytest.approx(skm.average_precision_score(y, score))


@pytest.mark.parametrize("seed", range(4))
def test_auc_and_average_precision_agree_with_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 120)
    score = np.round(np.clip(y * 0.2 + rng.random(120) * 0.8, 0, 1), 1)  # few distinct values: many ties
    ours = binary_metrics(y, score, 0.5)
    assert ours["roc_auc"] == pytest.approx(skm.roc_auc_score(y, score))
    assert ours["pr_auc"] == pytest.approx(skm.average_precision_score(y, score))


def test_multiclass_macro_metrics_agree_with_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + np.eye(3)[y] * 1.2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = multiclass_metrics(y, probs, ["a", "b", "c"])
    ours = result.macro
    pred = probs.argmax(axis=1)
    assert ours["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert ours["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert ours["recall"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
    assert ours["precision"] == pytest.approx(skm.precision_score(y, pred, average="macro"))
    assert ours["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    for k, name in enumerate("abc"):  # one-vs-rest rows, every count at the argmax (accuracy included)
        row = result.per_class[name]
        assert row["accuracy"] == pytest.approx(skm.accuracy_score(y == k, pred == k))
        assert row["precision"] == pytest.approx(skm.precision_score(y == k, pred == k))
        assert row["specificity"] == pytest.approx(skm.recall_score(y != k, pred != k))


def test_patient_bootstrap_is_wider_than_image_bootstrap_for_clustered_images() -> None:
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(30), 10)  # 30 patients, 10 images each
    correct = np.repeat(rng.random(30) < 0.7, 10).astype(float)  # right or wrong per patient, not per image

    def accuracy(idx: np.ndarray) -> dict[str, float]:
        return {"acc": float(correct[idx].mean())}

    lo_p, hi_p = patient_bootstrap(accuracy, patients, 500, seed=1)["acc"]
    lo_i, hi_i = patient_bootstrap(accuracy, np.arange(300), 500, seed=1)["acc"]
    assert lo_p <= correct.mean() <= hi_p
    assert (hi_p - lo_p) > 2 * (hi_i - lo_i)


def test_threshold_is_a_function_of_validation_data_alone() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    assert choose_threshold(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])) == pytest.approx(0.5)  # middle of the gap
    y2 = np.array([0, 0, 1, 0, 1, 1])
    assert choose_threshold(y2, np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9])) == pytest.approx(0.25)
    youden = choose_threshold(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), "youden")
    assert 0.3 < youden <= 0.7


def test_threshold_for_specificity_reaches_it_on_the_data_it_was_chosen_on() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    score = rng.random(400) * 0.6 + y * 0.4
    t = threshold_for_specificity(y, score, 0.95)
    specificity = np.mean(score[y == 0] < t)
    assert specificity >= 0.95 and specificity < 0.96


def test_calibration_error() -> None:
    rng = np.random.default_rng(0)
    score = rng.random(20000)
    calibrated = (rng.random(20000) < score).astype(int)
    assert reliability(calibrated, score).ece < 0.02
    overconfident = np.full(1000, 0.9)
    assert reliability(np.tile([0, 1], 500), overconfident).ece == pytest.approx(0.4)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_temperature_scaling_undoes_overconfidence(task: str) -> None:
    from covidxr.evaluation.calibration import fit_temperature

    rng = np.random.default_rng(3)
    n, k = 4000, 2 if task == "binary" else 3
    true_logits = rng.normal(size=(n, k)) * 1.5
    if task == "binary":
        y = (rng.random(n) < 1 / (1 + np.exp(-true_logits[:, 1]))).astype(int)
    else:
        p = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
        y = np.array([rng.choice(k, p=row) for row in p])
    assert fit_temperature(true_logits * 4, y, task) == pytest.approx(4, rel=0.15)  # overconfident by 4x
    assert fit_temperature(true_logits, y, task) == pytest.approx(1, rel=0.15)
    assert fit_temperature(true_logits, np.zeros(n, dtype=int), task) == 1.0  # one class: nothing to fit


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_a_separable_validation_split_never_sharpens_scores_into_ties(task: str) -> None:
    """With no mistake on validation the NLL has no minimum: the fit must not run T to its bound (it once
    collapsed 1,711 external scores into 5 values); outside scores keep as many values as their logits."""
    from scipy.special import expit

    from covidxr.evaluation.calibration import MIN_TEMPERATURE, fit_temperature

    rng = np.random.default_rng(4)
    n, k = 300, 2 if task == "binary" else 3
    y = rng.integers(0, k, n) if task == "multiclass" else rng.integers(0, 2, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 6.0  # every row right by a wide margin: separable
    if task == "binary":
        logits[:, 1] = np.where(y == 1, 1, -1) * rng.uniform(4, 12, n)
    t = fit_temperature(logits, y, task)
    assert t >= 1.0
    outside = rng.normal(scale=8.0, size=2000)  # external logits, any spread
    assert len(np.unique(expit(outside / t))) == len(outside)
    wrong = logits.copy()  # one mistake: sharpening may now be measured, but not beyond the search's bounds
    wrong[0] = wrong[0][::-1] if task == "binary" else np.roll(wrong[0], 1)
    assert MIN_TEMPERATURE <= fit_temperature(wrong, y, task) <= 20.0


def test_threshold_for_specificity_keeps_ties_together_and_cuts_between_scores() -> None:
    y = np.array([0] * 20 + [1] * 10)
    score = np.array([0.1] * 18 + [0.4] * 2 + [0.4] * 2 + [0.9] * 8)  # the 95% cut falls in a tie (with positives)
    t = threshold_for_specificity(y, score, 0.95)
    assert np.mean(score[y == 0] < t) >= 0.95
    assert t == pytest.approx((0.4 + 0.9) / 2)  # above the whole tie at 0.4, halfway to the next score
    t_sep = threshold_for_specificity(np.array([0, 0, 1, 1]), np.array([0.01, 0.02, 0.97, 0.99]), 0.95)
    assert 0.02 < t_sep < 0.97  # a sane cut on a separable split, not a hair above the top negative


def test_within_source_auc_sees_through_a_model_that_learned_the_hospital() -> None:
    """Hospital A sends positives and negatives, hospital B negatives only; the 'model' scores the hospital."""
    from covidxr.evaluation.fair import CANNOT, fair_score

    rng = np.random.default_rng(5)
    sources = np.array(["A"] * 100 + ["B"] * 100)
    y = np.r_[rng.integers(0, 2, 100), np.zeros(100, int)]
    score = np.where(sources == "A", 0.6, 0.2) + rng.random(200) * 0.1  # knows the hospital, not the finding
    groups = np.arange(200).astype(str)
    fair = fair_score(y, score, score > 0.5, list(sources), groups, n_resamples=200)
    assert fair.mixed_auc is not None and fair.mixed_auc > 0.75  # the flattering number
    a = fair.sources["A"]
    assert fair.within_source_auc == pytest.approx(skm.roc_auc_score(y[:100], score[:100]))
    assert abs(fair.within_source_auc - 0.5) < 0.15 and a.n_negative + a.n_positive == 100
    assert fair.within_source_ci95[0] < 0.5 < fair.within_source_ci95[1]
    assert fair.one_class_sources == {"B": "negative"} and 0 < fair.cross_source_share < 1
    assert a.sensitivity == 1.0 and a.specificity == 0.0  # every A film called positive
    only = fair_score(np.r_[np.ones(50, int), np.zeros(50, int)], rng.random(100), np.zeros(100, bool),
                      ["A"] * 50 + ["B"] * 50, groups[:100], n_resamples=0)  # fmt: skip
    assert only.within_source_auc is None and only.verdict.startswith(CANNOT) and only.cross_source_share == 1


def test_pooled_within_source_auc_weighs_sources_by_their_pairs() -> None:
    from covidxr.evaluation.fair import fair_score

    rng = np.random.default_rng(6)
    y = np.r_[rng.integers(0, 2, 60), rng.integers(0, 2, 140)]
    score = rng.random(200) + y * np.r_[np.full(60, 0.8), np.full(140, 0.1)]
    src = ["A"] * 60 + ["B"] * 140
    fair = fair_score(y, score, score > 0.5, src, np.arange(200).astype(str), n_resamples=0)
    a, b = fair.sources["A"], fair.sources["B"]
    weights = np.array([a.n_positive * a.n_negative, b.n_positive * b.n_negative])
    assert fair.within_source_auc == pytest.approx(np.average([a.auc, b.auc], weights=weights))
    assert b.auc == pytest.approx(skm.roc_auc_score(y[60:], score[60:]))


def test_films_that_name_no_source_are_never_paired_as_one_hospital() -> None:
    from covidxr.evaluation.fair import CANNOT, fair_score

    y, score = np.array([1, 1, 0, 0]), np.array([0.9, 0.8, 0.2, 0.1])
    unknown = fair_score(y, score, score > 0.5, ["", "", "", ""], np.arange(4).astype(str), n_resamples=0)
    assert unknown.within_source_auc is None and unknown.verdict.startswith(CANNOT) and unknown.mixed_auc == 1.0
