"""A CSV manifest: at least `path,label` (paths relative to the CSV); `patient_id`, `source` and any other
column are kept; an optional `split` column (train/val/test) is the data set's own split.
"""

from __future__ import annotations

import os
from pathlib import Path

from covidxr.data.formats.base import (
    SPLIT_FOLDERS,
    DatasetFormat,
    fill_dicom_patient_ids,
    read_csv,
)
from covidxr.data.manifest import OFFICIAL_SPLIT, Manifest, Record, Skipped
from covidxr.data.readers import Problem
from covidxr.errors import DataError

CSV_NAMES = ("labels.csv", "manifest.csv")
CORE = ("path", "label", "patient_id", "source", "split")


def load(csv_path: Path, views: tuple[str, ...] = ()) -> Manifest:
    rows, header = read_csv(csv_path)
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {', '.join(missing)}; a manifest needs at least path,label "
            f"(found: {', '.join(header) or 'no header'})"
        )
    records, skipped = [], []
    for line_no, row in enumerate(rows, start=2):
        rel = _relative((row.get("path") or "").strip(), csv_path.parent)
        label = (row.get("label") or "").strip()
        if not rel:
            skipped.append(Skipped(f"{csv_path.name}:{line_no}", Problem.MISSING, "empty path"))
            continue
        if not label:
            skipped.append(Skipped(rel, Problem.UNKNOWN_LABEL, f"empty label on line {line_no}"))
            continue
        meta = {k: v for k, v in row.items() if k and k not in CORE and v}
        split = SPLIT_FOLDERS.get((row.get("split") or "").strip().lower())
        if split:
            meta[OFFICIAL_SPLIT] = split
        pid = (row.get("patient_id") or "").strip() or None
        records.append(Record(rel, label, pid, row.get("source") or "", meta))
    if not records and not skipped:
        raise DataError(f"{csv_path}: the manifest lists no images")
    root = csv_path.parent
    return Manifest(root, fill_dicom_patient_ids(root, records), "csv", skipped=skipped)


def _relative(path: str, root: Path) -> str:
    """A listed path as the manifest keeps it, relative to the CSV's folder (an absolute one made relative), so a
    CSV reads the same alone and beside other --data sets (which are joined under their common folder)."""
    if not path or not os.path.isabs(path):
        return path
    return Path(os.path.relpath(path, root.resolve())).as_posix()


def find(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix.lower() == ".csv" else None
    return next((path / n for n in CSV_NAMES if (path / n).is_file()), None)


FORMAT = DatasetFormat(
    name="csv",
    title="CSV manifest (any data set of your own)",
    url="",
    licence="yours",
    layout="a .csv, or labels.csv / manifest.csv in the folder: path,label[,patient_id,source,split,...]",
    find=find,
    load=load,
    official_split=True,
)
