"""Kermany et al. 2018 ("chest_xray", Cell 172(5)): `chest_xray/<train|test|val>/<NORMAL|PNEUMONIA>/*.jpeg`.

Patient ids come from the file names (`person1234_bacteria_3085.jpeg` -> `person1234`, `IM-0115-0001.jpeg` ->
`IM-0115`, `NORMAL2-IM-0095-0001.jpeg` -> `NORMAL2-IM-0095`), so one child's films stay in one split.
Bacterial or viral pneumonia is kept as metadata. Kaggle's copy nests a second `chest_xray/` and a
`__MACOSX/` folder inside the first: both are listed as ignored, never read twice.
"""

from __future__ import annotations

import re
from pathlib import Path

from covidxr.data.formats.base import DatasetFormat, child_dirs, note_extras
from covidxr.data.formats.folder import list_class_folders, split_folders
from covidxr.data.manifest import Manifest, Record

SOURCE = "Kermany et al. 2018 (Guangzhou Women and Children's Medical Center), pediatric"
CLASSES = {"normal", "pneumonia"}
_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)


def patient_and_kind(filename: str) -> tuple[str | None, str | None]:
    """(patient id, pneumonia kind) parsed from a Kermany file name; (None, None) when it does not match."""
    stem = Path(filename).stem
    if m := _PERSON.match(stem):
        return m.group(1).lower(), {"bacteria": "bacterial", "virus": "viral"}[m.group(2).lower()]
    if m := _IM.match(stem):
        return m.group(1).upper(), None
    return None, None


def _splits(root: Path) -> dict[str, Path]:
    dirs = child_dirs(root)
    found = {n: p for n, p in dirs.items() if n.lower() in ("train", "test", "val")}
    ok = {"train", "test"} <= {n.lower() for n in found} and all(
        {c.lower() for c in child_dirs(p)} >= CLASSES for p in found.values()
    )
    return found if ok else {}


def find(path: Path) -> Path | None:
    for candidate in (path, path / "chest_xray"):
        if candidate.is_dir() and _splits(candidate):
            return candidate
    return None


def load(root: Path, views: tuple[str, ...] = ()) -> Manifest:
    ignored: list[str] = []
    splits = _splits(root) or split_folders(root)
    note_extras(root, splits, ignored)  # Kaggle's nested chest_xray/ copy and __MACOSX/
    records = []
    for name, folder in splits.items():
        for r in list_class_folders(root, folder, SOURCE, ignored, name.lower()):
            pid, kind = patient_and_kind(r.path.rsplit("/", 1)[-1])
            meta = r.meta | ({"pneumonia_kind": kind} if kind else {})
            records.append(Record(r.path, r.label, pid, SOURCE, meta))
    return Manifest(root, records, "kermany", ignored=ignored)


FORMAT = DatasetFormat(
    name="kermany",
    title="Chest X-ray pneumonia, pediatric (Kermany et al. 2018, 'chest_xray')",
    url="https://data.mendeley.com/datasets/rscbjbr9sj/2",
    licence="CC BY 4.0; cite Kermany et al., Cell 172(5), 2018",
    layout="chest_xray/<train|test|val>/<NORMAL|PNEUMONIA>/*.jpeg",
    find=find,
    load=load,
    official_split=True,
)
