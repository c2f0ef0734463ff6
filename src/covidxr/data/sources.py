"""Build a Manifest from the layouts users have: folder-per-class, a CSV manifest, or Cohen's metadata.csv.

Listing never decodes pixels (validation does); it only reads DICOM headers when a patient id is missing.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from covidxr.data.manifest import Manifest, Record, Skipped
from covidxr.data.readers import Problem, is_candidate_image, is_dicom, read_dicom_patient_id
from covidxr.errors import DataError

COHEN_COLUMNS = ("patientid", "finding", "view", "modality", "folder", "filename")
FRONTAL_VIEWS = ("PA", "AP", "AP Supine")
CSV_NAMES = ("labels.csv", "manifest.csv")


def load_manifest(path: Path | str, views: Iterable[str] = FRONTAL_VIEWS) -> Manifest:
    """Recognise the layout at `path` and list it. `views` applies to Cohen's metadata only."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path}: expected a folder or a .csv manifest, got a {path.suffix or 'plain'} file")
        header = _csv_header(path)
        if set(COHEN_COLUMNS) <= set(header):
            return from_cohen(path, views)
        return from_csv(path)
    for name in CSV_NAMES:
        if (path / name).is_file():
            return from_csv(path / name)
    if (path / "metadata.csv").is_file() and set(COHEN_COLUMNS) <= set(_csv_header(path / "metadata.csv")):
        return from_cohen(path / "metadata.csv", views)
    return from_folder(path)


def from_folder(root: Path | str) -> Manifest:
    """`ROOT/<label>/**/<image>`: the folder name is the label; hidden entries and non-images are reported."""
    root = Path(root)
    records: list[Record] = []
    ignored: list[str] = []
    for entry in sorted(root.iterdir()):
        rel = entry.relative_to(root).as_posix()
        if entry.name.startswith("."):
            ignored.append(rel + ("/" if entry.is_dir() else ""))
        elif entry.is_file():
            ignored.append(rel)  # a file beside the class folders has no label
        elif entry.is_dir():
            records.extend(_walk_class_folder(root, entry, ignored))
    if not records:
        raise DataError(
            f"{root}: no images found. Expected ROOT/<label>/<image files> (png, jpg, tif, bmp, dcm), "
            "a labels.csv with path,label columns, or Cohen's metadata.csv"
        )
    records = _fill_dicom_patient_ids(root, records)
    return Manifest(root, records, "folder", ignored=ignored)


def _walk_class_folder(root: Path, class_dir: Path, ignored: list[str]) -> list[Record]:
    records = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        here = Path(dirpath)
        for d in sorted(dirnames):
            if d.startswith("."):
                ignored.append((here / d).relative_to(root).as_posix() + "/")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            file = here / name
            rel = file.relative_to(root).as_posix()
            if name.startswith(".") or not is_candidate_image(file):
                ignored.append(rel)
            else:
                records.append(Record(rel, class_dir.name, None, f"folder:{root.name}"))
    return records


def from_csv(csv_path: Path | str) -> Manifest:
    """A CSV with at least `path,label` (paths relative to the CSV); other columns are kept as metadata."""
    csv_path = Path(csv_path)
    rows, header = _read_csv(csv_path)
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {', '.join(missing)}; a manifest needs at least path,label "
            f"(found: {', '.join(header) or 'no header'})"
        )
    records, skipped = [], []
    for line_no, row in enumerate(rows, start=2):
        rel = (row.get("path") or "").strip()
        label = (row.get("label") or "").strip()
        if not rel:
            skipped.append(Skipped(f"{csv_path.name}:{line_no}", Problem.MISSING, "empty path"))
            continue
        if not label:
            skipped.append(Skipped(rel, Problem.UNKNOWN_LABEL, f"empty label on line {line_no}"))
            continue
        meta = {k: v for k, v in row.items() if k and k not in ("path", "label", "patient_id", "source") and v}
        records.append(Record(rel, label, (row.get("patient_id") or "").strip() or None, row.get("source") or "", meta))
    if not records and not skipped:
        raise DataError(f"{csv_path}: the manifest lists no images")
    root = csv_path.parent
    return Manifest(root, _fill_dicom_patient_ids(root, records), "csv", skipped=skipped)


def cohen_label(finding: str) -> str | None:
    """Cohen's `finding` to a label: any COVID-19 finding is COVID-19; unknown/todo findings give None."""
    text = finding.strip()
    if "covid-19" in text.lower():
        return "COVID-19"
    if text.lower() in ("", "todo", "unknown"):
        return None
    if text.lower() in ("no finding", "normal"):
        return "normal"
    if text.lower().startswith("pneumonia"):
        return "pneumonia"
    return text.split("/")[-1].lower()


def from_cohen(metadata: Path | str, views: Iterable[str] = FRONTAL_VIEWS) -> Manifest:
    """Cohen's covid-chestxray-dataset: X-rays only, frontal views by default, `folder/filename` paths."""
    metadata = Path(metadata)
    wanted = {v.lower() for v in views}
    rows, _ = _read_csv(metadata)
    records, skipped, excluded = [], [], 0
    for row in rows:
        if (row.get("modality") or "").strip().lower() != "x-ray" or (
            row.get("view") or ""
        ).strip().lower() not in wanted:
            excluded += 1
            continue
        rel = f"{(row.get('folder') or '').strip()}/{(row.get('filename') or '').strip()}"
        label = cohen_label(row.get("finding") or "")
        if label is None:
            skipped.append(Skipped(rel, Problem.UNKNOWN_LABEL, f"finding {row.get('finding')!r}"))
            continue
        meta = {k: v for k, v in row.items() if k in ("view", "sex", "age", "finding", "date", "location") and v}
        pid = (row.get("patientid") or "").strip() or None
        records.append(Record(rel, label, pid, "Cohen covid-chestxray-dataset", meta))
    if not records:
        raise DataError(f"{metadata}: no frontal X-ray rows with a usable finding (views kept: {', '.join(views)})")
    root = metadata.parent
    return Manifest(root, records, "cohen", skipped=skipped, excluded=excluded)


def _fill_dicom_patient_ids(root: Path, records: list[Record]) -> list[Record]:
    """Where a DICOM record has no patient id, use the header's PatientID (the study's source of truth)."""
    out = []
    for r in records:
        if r.patient_id is None and is_dicom(root / r.path):
            pid = read_dicom_patient_id(root / r.path)
            if pid:
                r = Record(r.path, r.label, pid, r.source, r.meta)
        out.append(r)
    return out


def _csv_header(path: Path) -> list[str]:
    return _read_csv(path, header_only=True)[1]


def _read_csv(path: Path, header_only: bool = False) -> tuple[list[dict[str, str]], list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if header_only:
                return [], header
            reader.fieldnames = header
            return list(reader), header
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 text CSV ({exc.reason} at byte {exc.start})") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV ({exc})") from exc
