"""Each input layout becomes the same Manifest contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from covidxr.data.formats.cohen import cohen_label
from covidxr.data.formats.cohen import load as from_cohen
from covidxr.data.readers import Problem
from covidxr.data.sources import load_manifest
from covidxr.errors import DataError
from tests.imagefiles import gradient, save, write_dicom


def test_folder_per_class_skips_and_reports_hidden_and_non_images(tmp_path: Path) -> None:
    save(tmp_path / "COVID-19" / "a.PNG", gradient())
    save(tmp_path / "normal" / "sub" / "b.JpEg", gradient())
    save(tmp_path / "normal" / ".cache" / "c.png", gradient())
    write_dicom(tmp_path / "normal" / "IM0001", gradient(maximum=4095), bits_stored=12, patient_id="DCM-7")
    (tmp_path / "normal" / "notes.txt").write_text("radiologist notes")
    (tmp_path / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "README.md").write_text("about")
    manifest = load_manifest(tmp_path)
    assert manifest.layout == "folder"
    by_path = {r.path: r for r in manifest.records}
    assert set(by_path) == {"COVID-19/a.PNG", "normal/sub/b.JpEg", "normal/IM0001"}
    assert by_path["normal/sub/b.JpEg"].label == "normal"
    assert by_path["normal/IM0001"].patient_id == "DCM-7"  # DICOM PatientID when none is given
    assert by_path["COVID-19/a.PNG"].patient_id is None
    assert set(manifest.ignored) == {".DS_Store", "README.md", "normal/.cache/", "normal/notes.txt"}


def test_csv_manifest_paths_are_relative_to_the_csv(tmp_path: Path) -> None:
    save(tmp_path / "imgs" / "x1.png", gradient())
    save(tmp_path / "imgs" / "x2.png", gradient())
    csv_path = tmp_path / "meta" / "list.csv"
    csv_path.parent.mkdir()
    csv_path.write_text(
        "path,label,patient_id,age,source\n../imgs/x1.png,COVID-19,p1,61,site A\n../imgs/x2.png,normal,,,site B\n"
        "../imgs/x3.png,,p3,,site B\n"
    )
    manifest = load_manifest(csv_path)
    assert manifest.layout == "csv"
    assert [r.label for r in manifest.records] == ["COVID-19", "normal"]
    assert manifest.abspath(manifest.records[0]).resolve() == (tmp_path / "imgs" / "x1.png").resolve()
    assert manifest.records[0].meta == {"age": "61"} and manifest.records[0].source == "site A"
    assert manifest.records[1].patient_id is None
    assert [(s.path, s.problem) for s in manifest.skipped] == [("../imgs/x3.png", Problem.UNKNOWN_LABEL)]


def test_folder_with_labels_csv_is_read_as_csv(tmp_path: Path) -> None:
    save(tmp_path / "a.png", gradient())
    (tmp_path / "labels.csv").write_text("path,label\na.png,normal\n")
    assert load_manifest(tmp_path).layout == "csv"


def test_csv_without_required_columns_names_them(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("file,diagnosis\na.png,normal\n")
    with pytest.raises(DataError, match=r"bad\.csv: missing column\(s\) path, label"):
        load_manifest(bad)


def test_cohen_metadata_keeps_frontal_xrays_and_maps_findings(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text(
        "patientid,offset,sex,age,finding,survival,view,modality,date,location,folder,filename\n"
        "1,0,M,65,Pneumonia/Viral/COVID-19,Y,PA,X-ray,2020,Wuhan,images,c1.png\n"
        "1,3,M,65,Pneumonia/Viral/COVID-19,Y,AP Supine,X-ray,2020,Wuhan,images,c2.jpg\n"
        "2,0,F,40,No Finding,,AP,X-ray,2020,Rome,images,n1.png\n"
        "3,0,F,50,Pneumonia/Bacterial/Streptococcus,,PA,X-ray,2020,Rome,images,b1.png\n"
        "4,0,F,50,COVID-19,,L,X-ray,2020,Rome,images,lateral.png\n"
        "5,0,M,70,COVID-19,,Axial,CT,2020,Rome,volumes,ct.nii.gz\n"
        "6,0,M,70,todo,,PA,X-ray,2020,Rome,images,t.png\n"
    )
    manifest = load_manifest(tmp_path)
    assert manifest.layout == "cohen"
    assert [(r.path, r.label, r.patient_id) for r in manifest.records] == [
        ("images/c1.png", "COVID-19", "1"),
        ("images/c2.jpg", "COVID-19", "1"),
        ("images/n1.png", "normal", "2"),
        ("images/b1.png", "pneumonia", "3"),
    ]
    assert manifest.excluded == {"not an X-ray in a kept view": 2}  # the lateral view and the CT volume
    assert [s.problem for s in manifest.skipped] == [Problem.UNKNOWN_LABEL]
    assert manifest.records[0].meta["age"] == "65"
    lateral = from_cohen(tmp_path / "metadata.csv", views=("L",))
    assert [r.path for r in lateral.records] == ["images/lateral.png"]


@pytest.mark.parametrize(
    ("finding", "label"),
    [
        ("COVID-19, ARDS", "COVID-19"),
        ("Pneumonia/Viral/SARS", "pneumonia"),
        ("Tuberculosis", "tuberculosis"),
        ("todo", None),
    ],
)
def test_cohen_label_mapping(finding: str, label: str | None) -> None:
    assert cohen_label(finding) == label


def test_unrecognised_inputs_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or folder"):
        load_manifest(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_manifest(tmp_path / "empty")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"expected a folder or a \.csv"):
        load_manifest(tmp_path / "x.txt")
    (tmp_path / "latin1.csv").write_bytes("path,label\nr\xe9sum\xe9.png,normal\n".encode("latin-1"))
    with pytest.raises(DataError, match="not a UTF-8"):
        load_manifest(tmp_path / "latin1.csv")
