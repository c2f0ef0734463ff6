"""The real development set: 621 images, 3 labels, 481 patients, a leak-free split with every class everywhere."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from covidxr.config import DataConfig
from covidxr.data.labels import LabelMap
from covidxr.data.prepare import inspect_data, prepare
from covidxr.data.sources import load_manifest
from covidxr.data.split import SPLITS


@pytest.fixture(scope="module")
def inspected(cxr_dev: Path):  # type: ignore[no-untyped-def]
    return inspect_data(DataConfig(paths=(str(cxr_dev),)))


def test_manifest_finds_every_image_with_its_label(cxr_dev: Path) -> None:
    manifest = load_manifest(cxr_dev)
    truth = {r["path"]: r["label"] for r in csv.DictReader((cxr_dev / "labels.csv").open())}
    assert len(manifest.records) == 621
    assert {r.path: r.label for r in manifest.records} == truth
    assert manifest.label_counts() == {"COVID-19": 185, "normal": 234, "pneumonia": 202}
    assert manifest.patient_count() == 481


def test_report_flags_no_broken_files_but_does_flag_the_geometry_shortcut(inspected) -> None:  # type: ignore[no-untyped-def]
    _, report = inspected
    assert report.ok and report.skipped == [] and report.usable == 621 and report.patients == 481
    assert any("geometry differs by class" in w for w in report.warnings)
    assert report.geometry["normal"]["square_fraction"] == 1.0
    assert report.geometry["COVID-19"]["square_fraction"] < 0.1


def test_split_is_leak_free_with_all_classes_in_every_split(cxr_dev: Path, tmp_path: Path) -> None:
    prepared = prepare(tmp_path, DataConfig(paths=(str(cxr_dev),), task="multiclass"))
    by_patient: dict[str, set[str]] = {}
    for r in prepared.manifest.records:
        by_patient.setdefault(r.patient_id or "", set()).add(prepared.split.assignment[r.path])
    assert all(len(s) == 1 for s in by_patient.values())
    counts = prepared.split.counts(prepared.manifest, prepared.label_map)
    assert all(counts[s][c] > 0 for s in SPLITS for c in ("COVID-19", "normal", "pneumonia"))
    for group in prepared.report.exact_duplicates:  # the set holds identical images of different patients
        assert len({prepared.split.assignment[p] for p in group}) == 1
    sizes = Counter(prepared.split.assignment.values())
    assert 0.62 < sizes["train"] / 621 < 0.78


def test_binary_mapping_matches_the_study(inspected) -> None:  # type: ignore[no-untyped-def]
    usable, _ = inspected
    label_map = LabelMap.from_labels(usable.labels, "binary")
    assert Counter(label_map.encode(r.label) for r in usable.records) == {1: 185, 0: 436}
