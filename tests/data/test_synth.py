"""Phantoms are deterministic, carry masks inside the lungs, and have no global-statistics shortcut."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from covidxr.data.synth import Anatomy, generate, render


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    generate(tmp_path / "a", n=12, seed=1)
    generate(tmp_path / "b", n=12, seed=1)
    generate(tmp_path / "c", n=12, seed=2)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_labels_patients_and_masks(phantoms: Path) -> None:
    rows = list(csv.DictReader((phantoms / "labels.csv").open()))
    assert len(rows) == 120
    assert {r["label"] for r in rows} == {"COVID-19", "normal"}
    per_patient: dict[str, set[str]] = {}
    for r in rows:
        per_patient.setdefault(r["patient_id"], set()).add(r["label"])
    assert len(per_patient) < len(rows)  # several images per patient
    assert all(len(labels) == 1 for labels in per_patient.values())
    for r in rows:
        if r["label"] == "COVID-19":
            mask = np.asarray(Image.open(phantoms / r["mask_path"]))
            image = Image.open(phantoms / r["path"])
            assert mask.shape == (image.height, image.width) and mask.max() == 255
        else:
            assert r["mask_path"] == ""


def test_lesions_lie_inside_the_lungs() -> None:
    rng = np.random.default_rng(0)
    anatomy = Anatomy(280, 260, 0.42, 0.15, 0.3, 0.1, 0.0, 1.0)
    for _ in range(5):
        _, lesion, lungs = render(anatomy, True, rng)
        assert lesion.any() and not (lesion & ~lungs).any()
        _, none, _ = render(anatomy, False, rng)
        assert not none.any()


def test_global_statistics_do_not_separate_the_classes(tmp_path: Path) -> None:
    labels = generate(tmp_path, n=300, seed=11)
    rows = list(csv.DictReader(labels.open()))
    features, y, groups = [], [], []
    for r in rows:
        a = np.asarray(Image.open(tmp_path / r["path"]), dtype=np.float64) / 255
        features.append([a.mean(), a.std(), a.shape[0], a.shape[1]])
        y.append(int(r["label"] == "COVID-19"))
        groups.append(r["patient_id"])
    model = make_pipeline(StandardScaler(), LogisticRegression())
    scores = cross_val_predict(model, np.array(features), y, groups=groups, cv=GroupKFold(5), method="predict_proba")
    auc = roc_auc_score(y, scores[:, 1])
    assert abs(auc - 0.5) < 0.15, f"global statistics predict the label (AUC {auc:.2f}): the phantoms leak"
