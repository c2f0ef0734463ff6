"""Generic folder-per-class: `ROOT/<label>/**/<image>`, or with split folders, `ROOT/<train|val|test>/<label>/...`.

The label is the class folder's name; with split folders the data set's own split is kept as metadata (so
`--split official` can use it) instead of being mistaken for a label.
"""

from __future__ import annotations

from pathlib import Path

from covidxr.data.formats.base import (
    SPLIT_FOLDERS,
    DatasetFormat,
    child_dirs,
    fill_dicom_patient_ids,
    walk_images,
)
from covidxr.data.manifest import OFFICIAL_SPLIT, Manifest, Record
from covidxr.errors import DataError


def split_folders(root: Path) -> dict[str, Path]:
    """`{split: folder}` when every visible sub-folder of `root` is a split name holding class folders."""
    dirs = child_dirs(root)
    if not dirs or not all(name.lower() in SPLIT_FOLDERS and child_dirs(p) for name, p in dirs.items()):
        return {}
    return {name: p for name, p in dirs.items()}


def list_class_folders(
    root: Path, top: Path, source: str, ignored: list[str], split: str | None = None
) -> list[Record]:
    """Records of every `top/<label>/**/<image>`; files directly in `top` have no label and are ignored."""
    records = []
    for entry in sorted(top.iterdir()):
        rel = entry.relative_to(root).as_posix()
        if entry.name.startswith(".") or entry.name == "__MACOSX":
            ignored.append(rel + ("/" if entry.is_dir() else ""))
        elif entry.is_file():
            ignored.append(rel)
        elif entry.is_dir():
            meta = {OFFICIAL_SPLIT: split} if split else {}
            for file in walk_images(root, entry, ignored):
                records.append(Record(file.relative_to(root).as_posix(), entry.name, None, source, dict(meta)))
    return records


def load(root: Path, views: tuple[str, ...] = ()) -> Manifest:
    ignored: list[str] = []
    source = f"folder:{root.name}"
    splits = split_folders(root)
    if splits:
        records = []
        for name, folder in splits.items():
            records += list_class_folders(root, folder, source, ignored, SPLIT_FOLDERS[name.lower()])
    else:
        records = list_class_folders(root, root, source, ignored)
    if not records:
        raise DataError(
            f"{root}: no images found. Expected ROOT/<label>/<image files> (png, jpg, tif, bmp, dcm), "
            "ROOT/<train|val|test>/<label>/<images>, a labels.csv with path,label columns, or one of the public "
            "layouts listed by `covidxr data formats`"
        )
    return Manifest(root, fill_dicom_patient_ids(root, records), "folder", ignored=ignored)


def find(path: Path) -> Path | None:
    return path if path.is_dir() else None


FORMAT = DatasetFormat(
    name="folder",
    title="Folder per class (any data set of your own)",
    url="",
    licence="yours",
    layout="ROOT/<label>/**/<image>, or ROOT/<train|val|test>/<label>/**/<image>",
    find=find,
    load=load,
    official_split=True,
)
