"""Shortcut audit (DeGrave et al. 2021): can the labels be predicted without looking at the lungs?

1. Metadata-only baseline: a random forest on non-anatomical image facts (size, aspect, format, bit depth,
   global intensity, border strips), trained on train and scored on test. High AUC = labels leak through
   acquisition, not anatomy.
2. Lung occlusion: the model re-scored with the central chest (an ellipse over both lung fields) replaced by the
   image mean. If AUC stays high, the model uses something outside the lungs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from covidxr.data.dataset import Preprocess
from covidxr.data.manifest import Record
from covidxr.data.readers import DecodedImage, read_image
from covidxr.evaluation.bootstrap import patient_bootstrap
from covidxr.evaluation.metrics import roc_auc
from covidxr.results import AucCI, Baseline

METADATA_WARN_AUC = 0.8
OCCLUSION_WARN_AUC = 0.8
BORDER = 0.05  # border strip width, as a fraction of the image side
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DICOM")
FEATURE_NAMES = (
    "width", "height", "aspect", "pixels", "bit_depth", *(f"format_{f}" for f in FORMATS), "mean", "std",
    "border_top_mean", "border_bottom_mean", "border_left_mean", "border_right_mean", "border_std",
)  # fmt: skip


def metadata_features(root: Path, records: Sequence[Record], max_pixels: int | None = None) -> np.ndarray:
    """One row of non-anatomical facts per image, read from the original file (not the resized tensor)."""
    return np.asarray([_metadata_row(_read(root, r, max_pixels)) for r in records], dtype=float)


def audit_features(
    root: Path, records: Sequence[Record], preprocess: Preprocess, max_pixels: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Each film read once: its metadata facts (metadata_features), and the intensity and border facts of what
    the network sees (after the run's preprocessing, where size and format are gone): what cropping and
    equalisation leave of the acquisition cues."""
    meta, seen = [], []
    for r in records:
        image = _read(root, r, max_pixels)
        meta.append(_metadata_row(image))
        seen.append(intensity_facts(preprocess.to_unit_rgb(image.pixels)[0].numpy()))
    return np.asarray(meta, dtype=float), np.asarray(seen, dtype=float)


def _read(root: Path, record: Record, max_pixels: int | None) -> DecodedImage:
    return read_image(root / record.path, max_pixels) if max_pixels else read_image(root / record.path)


def _metadata_row(image: DecodedImage) -> list[float]:
    info = image.info
    return [
        info.width, info.height, info.width / info.height, info.width * info.height, info.bit_depth,
        *(float(info.format == f) for f in FORMATS), *intensity_facts(image.pixels),
    ]  # fmt: skip


def intensity_facts(px: np.ndarray) -> list[float]:
    """Mean and std of the image, the mean of each border strip, and the std over all four strips."""
    b = max(1, int(BORDER * min(px.shape)))
    strips = (px[:b], px[-b:], px[:, :b], px[:, -b:])
    border = float(np.concatenate([s.ravel() for s in strips]).std())
    return [float(px.mean()), float(px.std()), *(float(s.mean()) for s in strips), border]


def auc_with_ci(y: np.ndarray, score: np.ndarray, groups: np.ndarray, n_resamples: int, seed: int) -> AucCI:
    auc = roc_auc(y, score)

    def metric(idx: np.ndarray) -> dict[str, float]:
        yy = y[idx]
        return {"auc": roc_auc(yy, score[idx])}

    no_resamples = (float("nan"), float("nan"))
    lo, hi = patient_bootstrap(metric, groups, n_resamples, seed).get("auc", no_resamples)
    return AucCI(auc, [lo, hi])


INPUT_FEATURE_NAMES = FEATURE_NAMES[FEATURE_NAMES.index("mean") :]  # intensity_facts, without size and format


def metadata_baseline(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    groups_test: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    names: Sequence[str] = FEATURE_NAMES,
) -> Baseline:
    """Binary targets (positive vs rest). Returns test AUC with CI, the most used features, and the verdict."""
    forest = RandomForestClassifier(n_estimators=300, min_samples_leaf=3, random_state=seed, n_jobs=1)
    forest.fit(x_train, y_train)
    score = (
        forest.predict_proba(x_test)[:, list(forest.classes_).index(1)]
        if 1 in forest.classes_
        else np.zeros(len(y_test))
    )
    auc = auc_with_ci(y_test, score, groups_test, n_resamples, seed)
    order = np.argsort(forest.feature_importances_)[::-1][:5]
    top = [(names[i], round(float(forest.feature_importances_[i]), 3)) for i in order]
    return Baseline(auc.auc, auc.ci, top, bool(auc.auc >= METADATA_WARN_AUC))


AUDITED_TRAIN, AUDITED_TEST = 2000, 1000  # films at most: the audit's forests and occlusion on a sample


def patient_sample(records: Sequence[Record], cap: int, seed: int) -> list[int]:
    """Indices of whole patients' films, at most `cap` films (all of them where fewer), drawn at random within
    each label in its share: what the audit reads of a large set, with its CIs still by patient."""
    if len(records) <= cap:
        return list(range(len(records)))
    rng = np.random.default_rng(seed)
    by_patient: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_patient.setdefault(r.group, []).append(i)
    patients = list(by_patient)
    chosen: list[int] = []
    for g in (patients[i] for i in rng.permutation(len(patients))):
        if len(chosen) + len(by_patient[g]) <= cap:
            chosen += by_patient[g]
    return sorted(chosen)
