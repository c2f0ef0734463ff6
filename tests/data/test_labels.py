"""Label spellings of the public sets meet in one name; the user's renames and drops apply after that."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidxr.data.labels import LabelMap, LabelRules, canonical_label, parse_label_map
from covidxr.errors import DataError


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("COVID", "COVID-19"), ("covid-19", "COVID-19"), ("COVID19", "COVID-19"), ("COVID-19 pneumonia", "COVID-19"),
        ("covid_19", "COVID-19"), ("NORMAL", "normal"), ("Normal", "normal"), ("No Finding", "normal"),
        ("PNEUMONIA", "pneumonia"), ("Viral Pneumonia", "pneumonia"), ("Lung_Opacity", "lung opacity"),
        ("Tuberculosis", "Tuberculosis"), ("  edema ", "edema"),
    ],
)  # fmt: skip
def test_canonical_names(raw: str, name: str) -> None:
    assert canonical_label(raw) == name


def test_rules_rename_merge_then_drop() -> None:
    rules = LabelRules({"Viral Pneumonia": "viral", "Lung_Opacity": "pneumonia"}, drop=("NORMAL",))
    assert rules.apply("Viral Pneumonia") == "viral"  # the raw spelling
    assert rules.apply("viral pneumonia") == "viral"  # any spelling of the same label
    assert rules.apply("PNEUMONIA") == "pneumonia" and rules.apply("Lung_Opacity") == "pneumonia"
    assert rules.apply("No Finding") is None  # dropped as its canonical name
    assert rules.apply("COVID") == "COVID-19"
    assert LabelRules({"normal": "control"}).apply("No Finding") == "control"  # a canonical name: every spelling


def test_label_map_from_text_file_or_mapping(tmp_path: Path) -> None:
    assert parse_label_map("A=B, C = D") == {"A": "B", "C": "D"}
    (tmp_path / "m.yaml").write_text("Lung_Opacity: pneumonia\nNORMAL: normal\n")
    assert parse_label_map(str(tmp_path / "m.yaml")) == {"Lung_Opacity": "pneumonia", "NORMAL": "normal"}
    assert parse_label_map({"x": "y"}) == {"x": "y"} and parse_label_map(None) == {}
    with pytest.raises(DataError, match=r"expected OLD=NEW pairs.*'A'"):
        parse_label_map("A")
    (tmp_path / "bad.yaml").write_text("- a\n- b\n")
    with pytest.raises(DataError, match=r"bad\.yaml: a label map file must hold"):
        parse_label_map(str(tmp_path / "bad.yaml"))


def test_positive_is_matched_after_mapping() -> None:
    label_map = LabelMap.from_labels(["COVID-19", "normal"], "binary", positive="COVID")
    assert label_map.positive == "COVID-19" and label_map.encode("COVID-19") == 1
    with pytest.raises(DataError, match="positive label 'TB' is not in the data"):
        LabelMap.from_labels(["COVID-19", "normal"], "binary", positive="TB")
    multi = LabelMap.from_labels(["normal", "pneumonia"], "multiclass")
    assert multi.knows("normal") and not multi.knows("COVID-19")
    assert LabelMap.from_labels(["COVID-19", "normal"], "binary").knows("tuberculosis")
