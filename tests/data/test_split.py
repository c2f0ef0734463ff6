"""Patient-level split: no leak, duplicates together, stratified, reproducible, reused from splits.csv."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from covidxr.data.labels import LabelMap
from covidxr.data.manifest import Manifest, Record
from covidxr.data.split import (
    Split,
    assert_no_leak,
    load_or_make_split,
    make_split,
    read_split,
)
from covidxr.errors import DataError


def _manifest(n_patients: int = 90, with_ids: bool = True) -> Manifest:
    records = []
    for p in range(n_patients):
        label = ("COVID-19", "normal", "pneumonia")[p % 3]
        for k in range(1 + p % 4):  # 1..4 images per patient
            records.append(Record(f"{label}/{p}_{k}.png", label, f"P{p}" if with_ids else None))
    return Manifest(Path("/data"), records, "csv")


def _patients_by_split(manifest: Manifest, split: Split) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in manifest.records:
        out.setdefault(r.patient_id or r.path, set()).add(split.assignment[r.path])
    return out


def test_no_patient_in_two_splits_and_classes_stratified() -> None:
    manifest = _manifest()
    label_map = LabelMap.from_labels(manifest.labels, "multiclass")
    split = make_split(manifest, label_map, seed=3)
    assert all(len(s) == 1 for s in _patients_by_split(manifest, split).values())
    counts = split.counts(manifest, label_map)
    for cls in label_map.classes:
        total = sum(counts[s][cls] for s in counts)
        assert all(counts[s][cls] > 0 for s in counts), counts
        assert counts["train"][cls] / total == pytest.approx(0.7, abs=0.1)
    sizes = Counter(split.assignment.values())
    assert sizes["val"] / len(manifest.records) == pytest.approx(0.15, abs=0.05)


def test_duplicates_of_different_patients_never_straddle_splits() -> None:
    manifest = _manifest()
    label_map = LabelMap.from_labels(manifest.labels, "multiclass")
    links = [["COVID-19/0_0.png", "normal/1_0.png"], ["pneumonia/2_0.png", "COVID-19/3_0.png", "normal/4_0.png"]]
    for seed in range(10):
        split = make_split(manifest, label_map, links, seed=seed)
        for link in links:
            assert len({split.assignment[p] for p in link}) == 1
        # and the patients pulled together keep all their images together too
        assert len({split.assignment[r.path] for r in manifest.records if r.patient_id in ("P0", "P1")}) == 1


def test_same_seed_same_split_other_seed_differs() -> None:
    manifest = _manifest()
    label_map = LabelMap.from_labels(manifest.labels, "binary")
    a = make_split(manifest, label_map, seed=0)
    assert make_split(manifest, label_map, seed=0).assignment == a.assignment
    assert make_split(manifest, label_map, seed=1).assignment != a.assignment


def test_without_patient_ids_each_image_is_its_own_group() -> None:
    manifest = _manifest(with_ids=False)
    label_map = LabelMap.from_labels(manifest.labels, "binary")
    split = make_split(manifest, label_map, seed=0)
    assert len(set(split.groups.values())) == len(manifest.records)


def test_splits_csv_is_written_reused_and_checked(tmp_path: Path) -> None:
    manifest = _manifest()
    label_map = LabelMap.from_labels(manifest.labels, "binary")
    first, reused = load_or_make_split(manifest, label_map, tmp_path, seed=0)
    assert not reused and (tmp_path / "splits.csv").is_file()
    again, reused = load_or_make_split(manifest, label_map, tmp_path, seed=99)  # seed ignored: file wins
    assert reused and again.assignment == first.assignment
    grown = Manifest(manifest.root, [*manifest.records, Record("normal/new.png", "normal", "NEW")], "csv")
    with pytest.raises(DataError, match="does not match this data set"):
        read_split(tmp_path / "splits.csv", grown)


def test_leak_check_catches_a_tampered_split() -> None:
    manifest = _manifest()
    label_map = LabelMap.from_labels(manifest.labels, "binary")
    split = make_split(manifest, label_map, seed=0)
    p3 = [r.path for r in manifest.records if r.patient_id == "P3"]
    assignment = dict(split.assignment)
    assignment[p3[0]] = "test" if assignment[p3[0]] != "test" else "train"
    with pytest.raises(DataError, match="leaks"):
        assert_no_leak(manifest, Split(assignment, split.groups))


def test_bad_fractions_are_rejected() -> None:
    manifest = _manifest()
    label_map = LabelMap.from_labels(manifest.labels, "binary")
    with pytest.raises(DataError, match="fractions"):
        make_split(manifest, label_map, fractions=(0.8, 0.3, 0.1))
