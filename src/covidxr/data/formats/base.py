"""What every data-set adapter shares: the `DatasetFormat` entry and the listing helpers.

Adapters only list files and read label tables; they never decode pixels (validation does). Labels are kept
as the data set spells them here; `covidxr.data.labels` maps them to canonical names afterwards.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from covidxr.data.manifest import Manifest, Record
from covidxr.data.readers import is_candidate_image, is_dicom, read_dicom_patient_id
from covidxr.errors import DataError

FRONTAL_VIEWS = ("PA", "AP", "AP Supine")
SPLIT_FOLDERS = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val"}
SPLIT_FOLDERS |= {"test": "test", "testing": "test"}
JUNK_FOLDERS = frozenset({"__MACOSX"})  # macOS zip leftovers: never images


@dataclass(frozen=True)
class DatasetFormat:
    """One public data set's layout: how to recognise it, how to list it, and where users get it."""

    name: str
    title: str
    url: str
    licence: str
    layout: str  # the files it expects, for `covidxr data formats`
    find: Callable[[Path], Path | None]  # the file or folder to list when `path` holds this layout, else None
    load: Callable[[Path, tuple[str, ...]], Manifest]  # (what `find` returned, frontal views kept) -> Manifest
    official_split: bool = False


def read_csv(path: Path, header_only: bool = False) -> tuple[list[dict[str, str]], list[str]]:
    """Rows and stripped header of a UTF-8 CSV (a BOM is fine); any problem is one DataError naming the file."""
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
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc


def csv_header(path: Path) -> list[str]:
    return read_csv(path, header_only=True)[1]


def csv_with_columns(path: Path, names: Iterable[str], columns: Iterable[str]) -> Path | None:
    """`path` itself or the first of `names` inside it, when it is a CSV holding every one of `columns`."""
    candidates = [path] if path.is_file() else [path / n for n in names]
    for candidate in candidates:
        if candidate.suffix.lower() == ".csv" and candidate.is_file():
            try:
                if set(columns) <= set(csv_header(candidate)):
                    return candidate
            except DataError:
                return None
    return None


def child_dirs(path: Path) -> dict[str, Path]:
    """Visible sub-folders by name (hidden ones and zip leftovers excluded)."""
    if not path.is_dir():
        return {}
    return {
        p.name: p
        for p in sorted(path.iterdir())
        if p.is_dir() and not p.name.startswith(".") and p.name not in JUNK_FOLDERS
    }


def walk_images(root: Path, folder: Path, ignored: list[str]) -> list[Path]:
    """Image files under `folder`, sorted; hidden files and folders and non-images go to `ignored`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for d in sorted(dirnames):
            if d.startswith(".") or d in JUNK_FOLDERS:
                ignored.append((here / d).relative_to(root).as_posix() + "/")
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in JUNK_FOLDERS)
        for name in sorted(filenames):
            file = here / name
            if name.startswith(".") or not is_candidate_image(file):
                ignored.append(file.relative_to(root).as_posix())
            else:
                found.append(file)
    return found


def note_extras(root: Path, keep: Iterable[str], ignored: list[str]) -> None:
    """Everything at the top of `root` that a layout does not use is listed as ignored, never silently lost."""
    keep = set(keep)
    for entry in sorted(root.iterdir()):
        if entry.name not in keep:
            ignored.append(entry.name + ("/" if entry.is_dir() else ""))


def fill_dicom_patient_ids(root: Path, records: list[Record]) -> list[Record]:
    """Where a DICOM record has no patient id, use the header's PatientID (the study's source of truth)."""
    out = []
    for r in records:
        if r.patient_id is None and is_dicom(root / r.path):
            pid = read_dicom_patient_id(root / r.path)
            if pid:
                r = Record(r.path, r.label, pid, r.source, r.meta)
        out.append(r)
    return out


def index_files(root: Path, folders: Iterable[Path]) -> dict[str, str]:
    """File name -> path relative to `root`, for tables that name images without their folder."""
    index: dict[str, str] = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in JUNK_FOLDERS]
            for name in filenames:
                index.setdefault(name, (Path(dirpath) / name).relative_to(root).as_posix())
    return index
