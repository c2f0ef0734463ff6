"""NIH ChestX-ray14 (Wang et al. 2017): `Data_Entry_2017.csv` (Image Index, Finding Labels, Patient ID, View
Position, ...) over `images_001/images/*.png` ... `images_012/`, with `train_val_list.txt` / `test_list.txt`.

Multi-label findings (`Effusion|Pneumonia`) become one label: `pneumonia` when Pneumonia is among them, `normal`
for `No Finding`, else `other`; the full list stays in the `findings` metadata. Rows whose image is not on
disk (only some of the twelve archives downloaded) are counted as excluded, not reported as broken files.
"""

from __future__ import annotations

from pathlib import Path

from covidxr.data.formats.base import DatasetFormat, csv_with_columns, index_files, read_csv
from covidxr.data.manifest import OFFICIAL_SPLIT, RAW_LABEL, Manifest, Record
from covidxr.errors import DataError

COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
SOURCE = "NIH ChestX-ray14 (NIH Clinical Center)"
OTHER = "other"


def nih_label(findings: str) -> str:
    names = {f.strip().lower() for f in findings.split("|")}
    if "pneumonia" in names:
        return "pneumonia"
    return "normal" if names == {"no finding"} else OTHER


def find(path: Path) -> Path | None:
    if path.is_dir():
        tables = sorted(path.glob("Data_Entry_2017*.csv"))
        return csv_with_columns(tables[0], [], COLUMNS) if tables else None
    return csv_with_columns(path, [], COLUMNS)


def _official(root: Path) -> dict[str, str]:
    split_of = {}
    for name, split in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
        if (root / name).is_file():
            for line in (root / name).read_text().split():
                split_of[line.strip()] = split
    return split_of


def load(table: Path, views: tuple[str, ...]) -> Manifest:
    root = table.parent
    rows, _ = read_csv(table)
    on_disk = index_files(root, sorted(p for p in root.glob("images*") if p.is_dir()))
    official = _official(root)
    wanted = {v.lower() for v in views}
    records, not_on_disk, other_view = [], 0, 0
    for row in rows:
        index = (row.get("Image Index") or "").strip()
        if (row.get("View Position") or "").strip().lower() not in wanted:
            other_view += 1
            continue
        if index not in on_disk:
            not_on_disk += 1
            continue
        findings = (row.get("Finding Labels") or "").strip()
        meta = {"findings": findings, RAW_LABEL: findings}
        for key, column in (("age", "Patient Age"), ("sex", "Patient Gender"), ("view", "View Position")):
            if row.get(column):
                meta[key] = row[column].strip()
        if index in official:
            meta[OFFICIAL_SPLIT] = official[index]
        pid = (row.get("Patient ID") or "").strip() or None
        records.append(Record(on_disk[index], nih_label(findings), pid, SOURCE, meta))
    if not records:
        raise DataError(
            f"{table}: none of its {len(rows)} rows has its image under {root}/images*/ "
            f"(views kept: {', '.join(views)})"
        )
    excluded = {k: v for k, v in (("view not kept", other_view), ("image not downloaded", not_on_disk)) if v}
    return Manifest(root, records, "nih-cxr14", excluded=excluded)


FORMAT = DatasetFormat(
    name="nih-cxr14",
    title="NIH ChestX-ray14 (Wang et al. 2017)",
    url="https://nihcc.app.box.com/v/ChestXray-NIHCC",
    licence="no restrictions on use; cite Wang et al. CVPR 2017 and acknowledge the NIH Clinical Center",
    layout="Data_Entry_2017.csv, images_0NN/images/*.png, train_val_list.txt, test_list.txt",
    find=find,
    load=load,
    official_split=True,
)
