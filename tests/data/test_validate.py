"""The data report names every broken file, flags duplicates, and decides whether the set is usable."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from covidxr.data.sources import load_manifest
from covidxr.data.validate import inspect
from tests.imagefiles import mixed_folder, save
from tests.imagefiles import smooth_image as _xray


def test_mixed_folder_runs_on_and_names_every_broken_file(tmp_path: Path) -> None:
    broken = mixed_folder(tmp_path)
    usable, report = inspect(load_manifest(tmp_path))
    assert report.ok, report.problem
    assert {s.path: s.problem for s in report.skipped} == broken
    assert report.usable == 10 and report.listed == 16
    assert {r.path for r in usable.records}.isdisjoint(broken)
    text = report.format_table()
    for path, problem in broken.items():
        assert f"{path}: {problem}" in text
    out = tmp_path / "report.json"
    report.write_json(out)
    saved = json.loads(out.read_text())
    assert {s["path"] for s in saved["skipped"]} == set(broken)
    assert saved["per_label"]["COVID-19"]["images"] == 5


def test_exact_and_near_duplicates_are_flagged(tmp_path: Path) -> None:
    for i in range(4):
        save(tmp_path / "a" / f"{i}.png", _xray(i, 128))
        save(tmp_path / "b" / f"{i}.png", _xray(50 + i, 128))
    save(tmp_path / "b" / "same-pixels.bmp", _xray(0, 128))  # identical pixels, other format and class
    near = Image.fromarray(_xray(1, 128)).resize((100, 100))  # a resized copy
    near.save(tmp_path / "b" / "resized.png")
    _, report = inspect(load_manifest(tmp_path), task="multiclass")
    assert report.exact_duplicates == [["a/0.png", "b/same-pixels.bmp"]]
    assert [(a, b) for a, b, _ in report.near_duplicates] == [("a/1.png", "b/resized.png")]
    assert any("carry different labels" in w for w in report.warnings)


def test_one_class_is_unusable_with_a_clear_message(tmp_path: Path) -> None:
    for i in range(5):
        save(tmp_path / "COVID-19" / f"{i}.png", _xray(i))
    _, report = inspect(load_manifest(tmp_path))
    assert not report.ok
    assert "only one class" in report.problem


def test_too_few_patients_per_class_is_unusable(tmp_path: Path) -> None:
    for i in range(5):
        save(tmp_path / "COVID-19" / f"{i}.png", _xray(i))
    save(tmp_path / "normal" / "0.png", _xray(99))
    _, report = inspect(load_manifest(tmp_path))
    assert not report.ok
    assert "too few patients" in report.problem and "not COVID-19 has 1" in report.problem


def test_missing_positive_label_names_the_labels_found(tmp_path: Path) -> None:
    for label in ("cats", "dogs"):
        for i in range(3):
            save(tmp_path / label / f"{i}.png", _xray(hash(label) % 100 + i))
    _, report = inspect(load_manifest(tmp_path))
    assert "'COVID-19' is not in the data" in report.problem and "cats, dogs" in report.problem
    _, multiclass = inspect(load_manifest(tmp_path), task="multiclass")
    assert multiclass.ok


def test_missing_patient_ids_and_class_geometry_are_warned(tmp_path: Path) -> None:
    for i in range(3):
        save(tmp_path / "COVID-19" / f"{i}.png", _xray(i, 64)[:, :40])  # portrait
        save(tmp_path / "normal" / f"{i}.png", _xray(10 + i, 64))  # square
    _, report = inspect(load_manifest(tmp_path))
    assert any("no patient ids" in w for w in report.warnings)
    assert any("geometry differs by class" in w for w in report.warnings)
