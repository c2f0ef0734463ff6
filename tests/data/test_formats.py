"""Each public data set, in its own layout, becomes the one Manifest contract: right labels, real patients,
no mask read as an X-ray, and its own split where it ships one."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from covidxr.config import DataConfig
from covidxr.data.formats import FORMATS, find_format
from covidxr.data.formats.kermany import SOURCE as kermany_source
from covidxr.data.formats.kermany import patient_and_kind
from covidxr.data.labels import LabelMap
from covidxr.data.manifest import LUNG_MASK, OFFICIAL_SPLIT
from covidxr.data.prepare import inspect_data, prepare
from covidxr.data.sources import RAW_LABEL, load_manifest
from covidxr.data.validate import confounded_labels
from covidxr.errors import DataError
from tests import public_layouts
from tests.imagefiles import save, smooth_image


def test_every_public_layout_is_recognised_as_itself(tmp_path: Path) -> None:
    made = {
        "kermany": public_layouts.kermany(tmp_path / "k"),
        "covid19-radiography": public_layouts.covid19_radiography(tmp_path / "r"),
        "covidx": public_layouts.covidx(tmp_path / "x"),
        "nih-cxr14": public_layouts.nih_cxr14(tmp_path / "n"),
        "rsna-pneumonia": public_layouts.rsna_pneumonia(tmp_path / "s"),
    }
    for name, path in made.items():
        assert find_format(path)[0].name == name
        assert load_manifest(path).layout == name
    assert find_format(tmp_path / "k")[0].name == "kermany"  # the folder holding chest_xray/ works too
    assert find_format(tmp_path / "r")[0].name == "covid19-radiography"
    with pytest.raises(DataError, match="not in the covidx layout"):
        load_manifest(made["kermany"], fmt="covidx")
    with pytest.raises(DataError, match="unknown data format 'imagenet'"):
        load_manifest(made["kermany"], fmt="imagenet")


@pytest.mark.parametrize(
    ("name", "patient", "kind"),
    [
        ("person1234_bacteria_3085.jpeg", "person1234", "bacterial"),
        ("person1_virus_6.jpeg", "person1", "viral"),
        ("IM-0115-0001.jpeg", "IM-0115", None),
        ("NORMAL2-IM-0095-0001.jpeg", "NORMAL2-IM-0095", None),
        ("scan.jpeg", None, None),
    ],
)
def test_kermany_patient_ids_come_from_file_names(name: str, patient: str | None, kind: str | None) -> None:
    assert patient_and_kind(name) == (patient, kind)


def test_kermany_labels_patients_and_kaggle_leftovers(tmp_path: Path) -> None:
    top = public_layouts.kermany(tmp_path)
    manifest = load_manifest(top)
    assert manifest.label_counts() == {"normal": 15, "pneumonia": 14}
    assert {r.meta[RAW_LABEL] for r in manifest.records} == {"NORMAL", "PNEUMONIA"}
    assert manifest.patient_count() < len(manifest.records)  # person1 has three films, IM-0100 two
    person1 = [r for r in manifest.records if r.patient_id == "person1"]
    assert len(person1) == 3 and {r.meta[OFFICIAL_SPLIT] for r in person1} == {"train", "test"}
    assert Counter(r.meta.get("pneumonia_kind") for r in manifest.records if r.label == "pneumonia") == {
        "bacterial": 11,
        "viral": 3,
    }
    assert not any(r.path.startswith(("chest_xray/", "__MACOSX/")) for r in manifest.records)  # nested copy unread
    assert {"chest_xray/", "__MACOSX/", ".DS_Store", "train/.DS_Store", "train/NORMAL/.DS_Store"} <= set(
        manifest.ignored
    )


def test_kermany_official_split_keeps_patients_whole(tmp_path: Path) -> None:
    top = public_layouts.kermany(tmp_path / "data")
    cfg = DataConfig(paths=(str(top),), task="multiclass", split="official")
    prepared = prepare(tmp_path / "run", cfg)
    assert prepared.split.method == "official" and prepared.report.split == "official"
    test = {r.path for r in prepared.split.records(prepared.manifest, "test")}
    official_test = {r.path for r in prepared.manifest.records if r.meta[OFFICIAL_SPLIT] == "test"}
    moved = {r.path for r in prepared.manifest.records if r.patient_id == "person1"}
    assert test == official_test | moved  # person1's training films follow their test film
    assert any("moved to test" in n for n in prepared.split.notes)
    val = prepared.split.records(prepared.manifest, "val")
    assert {r.label for r in val} == {"normal", "pneumonia"} and not {r.path for r in val} & official_test
    with pytest.raises(DataError, match="holds a official split, not patient"):
        prepare(tmp_path / "run", DataConfig(paths=(str(top),), task="multiclass"))


def test_official_split_is_refused_where_a_set_ships_none(tmp_path: Path) -> None:
    top = public_layouts.covid19_radiography(tmp_path)
    with pytest.raises(DataError, match="ships no split of its own; use --split patient"):
        prepare(tmp_path / "run", DataConfig(paths=(str(top),), split="official"))


def test_radiography_masks_are_never_images_and_covid_is_the_positive(tmp_path: Path) -> None:
    top = public_layouts.covid19_radiography(tmp_path)
    manifest = load_manifest(top)
    assert len(manifest.records) == sum(public_layouts.RADIOGRAPHY_CLASSES.values())
    assert not any("/masks/" in r.path for r in manifest.records)
    assert all(r.meta[LUNG_MASK] == r.path.replace("/images/", "/masks/") for r in manifest.records)
    assert manifest.label_counts() == {"COVID-19": 6, "lung opacity": 4, "normal": 6, "pneumonia": 5}
    by_label = {r.label: r for r in manifest.records}
    assert by_label["COVID-19"].source == public_layouts.RADIOGRAPHY_URLS["COVID"]  # from COVID.metadata.xlsx
    assert by_label["pneumonia"].meta[RAW_LABEL] == "Viral Pneumonia"
    assert set(manifest.ignored) >= {"README.md.txt"}
    label_map = LabelMap.from_labels(manifest.labels, "binary")  # the default positive is found
    assert sum(label_map.encode(r.label) for r in manifest.records) == 6


def test_covidx_lists_patients_per_source_and_its_split(tmp_path: Path) -> None:
    manifest = load_manifest(public_layouts.covidx(tmp_path))
    assert len(manifest.records) == 18
    assert manifest.label_counts() == {"COVID-19": 9, "negative": 9}
    ones = {r.patient_id for r in manifest.records if r.patient_id and r.patient_id.endswith(":1")}
    assert ones == {"cohen:1", "rsna:1"}  # patient 1 of one source is not patient 1 of another
    assert "train/COVID-19 (10).png" in {r.path for r in manifest.records}
    assert Counter(r.meta[OFFICIAL_SPLIT] for r in manifest.records) == {"train": 12, "val": 2, "test": 4}
    _, report = inspect_data(DataConfig(paths=(str(tmp_path / "covidx"),)))
    assert report.skipped == [] and report.usable == 18


def test_nih_multilabel_findings_views_and_missing_archives(tmp_path: Path) -> None:
    top = public_layouts.nih_cxr14(tmp_path)
    manifest = load_manifest(top)
    by_index = {r.path.rsplit("/", 1)[-1]: r for r in manifest.records}
    assert by_index["00000007_000.png"].label == "pneumonia"  # Effusion|Pneumonia
    assert by_index["00000007_000.png"].meta["findings"] == "Effusion|Pneumonia"
    assert by_index["00000002_000.png"].label == "normal"
    assert by_index["00000001_001.png"].label == "other" and by_index["00000001_001.png"].patient_id == "1"
    assert by_index["00000001_000.png"].path == "images_001/images/00000001_000.png"
    assert by_index["00000008_001.png"].meta[OFFICIAL_SPLIT] == "test"
    assert manifest.excluded == {"image not downloaded": 1}
    assert len(load_manifest(top, views=("PA",)).records) == 10  # the two AP films left out
    report = inspect_data(DataConfig(paths=(str(top),), task="multiclass", drop_labels=("other",)))[1]
    assert set(report.per_label) == {"normal", "pneumonia"} and report.raw_labels["normal"] == ["No Finding"]


def test_rsna_one_record_per_patient_with_boxes_and_compressed_dicom(tmp_path: Path) -> None:
    top = public_layouts.rsna_pneumonia(tmp_path)
    manifest = load_manifest(top)
    assert len(manifest.records) == len(public_layouts.RSNA_IDS)  # several label rows per positive patient
    assert manifest.label_counts() == {"normal": 4, "other": 1, "pneumonia": 4}
    positive = next(r for r in manifest.records if r.label == "pneumonia")
    assert positive.meta["boxes"] == "264,152,213,379;562,152,256,453"
    assert positive.patient_id == positive.path.split("/")[-1].removesuffix(".dcm")
    assert "stage_2_test_images/" in manifest.ignored
    _, report = inspect_data(DataConfig(paths=(str(top),), task="multiclass"))
    assert report.skipped == [] and report.usable == 9  # RLE-compressed DICOM decodes


def test_several_data_sets_join_with_their_sources_and_the_confound_is_named(tmp_path: Path) -> None:
    for i in range(6):
        save(tmp_path / "hospital" / "covid" / f"c{i}.png", smooth_image(3000 + i))
    kermany = public_layouts.kermany(tmp_path / "b", kaggle_extras=False)
    cfg = DataConfig(paths=(str(tmp_path / "hospital"), str(kermany)), task="binary")
    manifest, report = inspect_data(cfg)
    assert report.ok and len(manifest.records) == 6 + 29
    assert report.raw_labels["COVID-19"] == ["covid"]
    assert {r.meta["dataset"] for r in manifest.records} == {"hospital", "chest_xray"}
    assert all(r.patient_id is None or r.patient_id.startswith("chest_xray:") for r in manifest.records)
    assert set(report.label_by_source) == {"folder:hospital", kermany_source}
    assert any("every 'COVID-19' image comes from one source" in w for w in report.warnings)
    assert "source" in report.format_table()


def test_the_source_warning_names_exactly_the_labels_that_are_one_source(tmp_path: Path) -> None:
    radiography = public_layouts.covid19_radiography(tmp_path / "a")
    alone = inspect_data(DataConfig(paths=(str(radiography),)))[1]
    # Its viral pneumonia all comes from the Kermany URL and its COVID-19 from SIRM; normal and lung opacity
    # share RSNA: exactly the database's real confound.
    assert set(confounded_labels(alone.label_by_source)) == {"COVID-19", "pneumonia"}
    joined = inspect_data(DataConfig(paths=(str(radiography), str(public_layouts.covidx(tmp_path / "b")))))[1]
    # COVIDx adds COVID-19 from other sources; its own negatives all come from RSNA, as in COVIDx CXR-2.
    assert set(confounded_labels(joined.label_by_source)) == {"negative", "pneumonia"}
    assert sum("comes from one source" in w for w in joined.warnings) == 2


def test_format_registry_lists_where_to_get_each_public_set() -> None:
    public = {"kermany", "covid19-radiography", "covidx", "nih-cxr14", "rsna-pneumonia", "cohen", "nlm-tb", "jsrt"}
    assert public | {"csv", "folder"} == set(FORMATS)
    for name in public:
        assert FORMATS[name].url.startswith("https://") and FORMATS[name].licence


def test_montgomery_and_shenzhen_give_tb_labels_readings_and_their_lung_masks(tmp_path: Path) -> None:
    from covidxr.data.lungs import read_lung_mask

    mc = load_manifest(public_layouts.montgomery(tmp_path / "a"))
    assert mc.layout == "nlm-tb" and mc.label_counts() == {"normal": 3, "tuberculosis": 3}
    first = mc.records[0]
    assert first.patient_id == "MCUCXR_0001" and first.meta["sex"] == "M" and first.meta["age"] == "040Y"
    assert "Montgomery" in first.source and "NLM-MontgomeryCXRSet-ReadMe.pdf" in mc.ignored
    union = read_lung_mask(mc.root, first.meta[LUNG_MASK])  # the left and right halves, united
    assert union.shape == (64, 64) and union[30, 15] and union[30, 45] and not union[30, 32]
    from covidxr.lungs.films import MaskedFilms, with_masks

    films = MaskedFilms.load(mc.root, with_masks(mc), 32)  # what `covidxr lungs train` trains on
    assert films.masks.shape == (6, 32, 32) and 0.3 < float(films.masks.float().mean()) < 0.6
    sz = load_manifest(public_layouts.shenzhen(tmp_path / "b"))
    assert sz.label_counts() == {"normal": 2, "tuberculosis": 2} and "Shenzhen" in sz.records[0].source
    assert [bool(r.meta.get(LUNG_MASK)) for r in sz.records] == [True, True, False, False]  # masks cover part
    assert "CXR_png/Thumbs.db" in sz.ignored


def test_jsrt_reads_raw_films_the_right_way_round_with_scr_lung_masks(tmp_path: Path) -> None:
    from covidxr.data.lungs import read_lung_mask
    from covidxr.data.readers import read_image
    from covidxr.errors import ImageReadError

    manifest = load_manifest(public_layouts.jsrt(tmp_path))
    assert manifest.layout == "jsrt" and manifest.label_counts() == {"nodule": 2, "normal": 2}
    first = manifest.records[0]
    assert first.path == "All247images/All247images/JPCLN001.IMG" and first.patient_id == "JPCLN001"
    scr = "scratch/fold1/masks/{} lung/JPCLN001.gif"
    assert first.meta[LUNG_MASK] == f"{scr.format('left')}|{scr.format('right')}"
    assert [bool(r.meta.get(LUNG_MASK)) for r in manifest.records] == [True, True, True, False]  # both folds read
    assert "CNNDAT_EN.txt" in manifest.ignored and "All247images/All247images/CLNDAT_EN.txt" in manifest.ignored
    film = read_image(manifest.root / first.path)
    assert film.info.bit_depth == 12 and film.pixels.shape == (2048, 2048)
    assert film.pixels[1024, 600] < 0.2 < 0.7 < film.pixels[1024, 1024]  # lungs dark, mediastinum bright
    lungs = read_lung_mask(manifest.root, first.meta[LUNG_MASK])  # the two lungs, not the heart
    assert lungs.shape == (1024, 1024) and lungs[500, 200] and lungs[500, 600] and not lungs[500, 420]
    from covidxr.lungs.films import MaskedFilms, with_masks

    films = MaskedFilms.load(manifest.root, with_masks(manifest), 64)  # 2048-px films, 1024-px masks: aligned
    assert films.masks.shape == (3, 64, 64)
    assert films.films[films.masks].float().mean() < films.films[~films.masks].float().mean()  # lungs dark
    with pytest.raises(ImageReadError, match=r"JPCLN001\.gif.*1024x1024 px but its film is 1000x2048"):
        read_lung_mask(manifest.root, first.meta[LUNG_MASK], (2048, 1000))
    wrong = tmp_path / "analyze.img"
    wrong.write_bytes(b"\0" * 348)
    with pytest.raises(ImageReadError, match=r"analyze\.img.*JSRT raw film"):
        read_image(wrong)


def test_cohen_keeps_frontal_x_rays_and_finds_lungvae_masks(tmp_path: Path) -> None:
    manifest = load_manifest(public_layouts.cohen(tmp_path))
    assert manifest.layout == "cohen" and len(manifest.records) == 5  # the lateral view and the CT left out
    masks = {r.path: r.meta.get(LUNG_MASK) for r in manifest.records}
    assert masks["images/16630_2_2.png"] == "annotations/lungVAE-masks/16630_2_2_mask.png"
    assert masks["images/nejmc2001573_f1a.jpeg"] == "annotations/lungVAE-masks/nejmc2001573_f1a_mask.png"
    assert sum(bool(m) for m in masks.values()) == 2
