"""RSNA Pneumonia Detection Challenge (2018): `stage_2_train_labels.csv` (patientId, x, y, width, height,
Target; one row per box, so several rows per patient) and `stage_2_detailed_class_info.csv` (patientId, class)
over `stage_2_train_images/<patientId>.dcm`.

Labels: `Lung Opacity` -> pneumonia, `Normal` -> normal, `No Lung Opacity / Not Normal` -> other; without the
class file, Target 1 -> pneumonia and 0 -> `no lung opacity`. Boxes are kept as metadata (`x,y,w,h;...`).
The unlabelled `stage_2_test_images/` are ignored.
"""

from __future__ import annotations

from pathlib import Path

from covidxr.data.formats.base import DatasetFormat, csv_with_columns, note_extras, read_csv
from covidxr.data.manifest import RAW_LABEL, Manifest, Record, Skipped
from covidxr.data.readers import Problem

COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
SOURCE = "RSNA Pneumonia Detection Challenge (NIH ChestX-ray14 images)"
CLASS_LABELS = {"lung opacity": "pneumonia", "normal": "normal", "no lung opacity / not normal": "other"}


def find(path: Path) -> Path | None:
    if path.is_dir():
        tables = sorted(path.glob("stage_*_train_labels.csv"))
        return csv_with_columns(tables[-1], [], COLUMNS) if tables else None
    return csv_with_columns(path, [], COLUMNS)


def load(table: Path, views: tuple[str, ...] = ()) -> Manifest:
    root = table.parent
    stage = table.name.split("_train_labels")[0]  # stage_2
    images = f"{stage}_train_images"
    rows, _ = read_csv(table)
    detail_file = root / f"{stage}_detailed_class_info.csv"
    detail = (
        {r["patientId"].strip(): r["class"].strip() for r in read_csv(detail_file)[0]} if detail_file.is_file() else {}
    )
    boxes: dict[str, list[str]] = {}
    target: dict[str, bool] = {}
    for row in rows:
        pid = (row.get("patientId") or "").strip()
        if not pid:
            continue
        positive = (row.get("Target") or "0").strip() == "1"
        target[pid] = target.get(pid, False) or positive
        boxes.setdefault(pid, [])
        if positive:
            boxes[pid].append(",".join(str(round(float(row[k]))) for k in ("x", "y", "width", "height")))
    records, skipped = [], []
    for pid in target:
        raw = detail.get(pid)
        if raw is not None and raw.lower() not in CLASS_LABELS:
            skipped.append(Skipped(f"{images}/{pid}.dcm", Problem.UNKNOWN_LABEL, f"class {raw!r}"))
            continue
        label = CLASS_LABELS[raw.lower()] if raw else ("pneumonia" if target[pid] else "no lung opacity")
        meta = {RAW_LABEL: raw or f"Target {int(target[pid])}"}
        if boxes[pid]:
            meta["boxes"] = ";".join(boxes[pid])
        records.append(Record(f"{images}/{pid}.dcm", label, pid, SOURCE, meta))
    ignored: list[str] = []
    note_extras(root, {table.name, detail_file.name, images}, ignored)
    return Manifest(root, records, "rsna-pneumonia", skipped=skipped, ignored=ignored)


FORMAT = DatasetFormat(
    name="rsna-pneumonia",
    title="RSNA Pneumonia Detection Challenge (2018)",
    url="https://www.kaggle.com/c/rsna-pneumonia-detection-challenge",
    licence="competition data terms: research and non-commercial use; images from NIH ChestX-ray14",
    layout="stage_2_train_labels.csv, stage_2_detailed_class_info.csv, stage_2_train_images/<patientId>.dcm",
    find=find,
    load=load,
)
