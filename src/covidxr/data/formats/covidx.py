"""COVIDx (COVID-Net, Wang et al. 2020): `train.txt` / `test.txt` (and `val.txt` in later releases), one image
a line as `patient_id filename class source`, over `train/`, `test/` (and `val/`) image folders.

COVIDx pools several collections whose patient numbers overlap, so the patient id is `source:patient_id`.
Classes are `positive`/`negative` (COVIDx CXR-2 and later) or `normal`/`pneumonia`/`COVID-19` (earlier).
"""

from __future__ import annotations

import re
from pathlib import Path

from covidxr.data.formats.base import DatasetFormat, note_extras
from covidxr.data.manifest import OFFICIAL_SPLIT, RAW_LABEL, Manifest, Record, Skipped
from covidxr.data.readers import Problem
from covidxr.errors import DataError

LABELS = {"positive": "COVID-19", "negative": "negative"}
_LIST = re.compile(r"^(train|val|test)(_.*)?\.txt$", re.IGNORECASE)


def _lists(root: Path) -> dict[str, Path]:
    """Split name -> its list file (`train.txt`, `train_COVIDx9A.txt`, ...)."""
    found: dict[str, Path] = {}
    for file in sorted(root.glob("*.txt")) if root.is_dir() else []:
        if m := _LIST.match(file.name):
            found.setdefault(m.group(1).lower(), file)
    return found if {"train", "test"} <= set(found) else {}


def find(path: Path) -> Path | None:
    return path if _lists(path) else None


def load(root: Path, views: tuple[str, ...] = ()) -> Manifest:
    lists = _lists(root)
    ignored: list[str] = []
    note_extras(root, {f.name for f in lists.values()} | set(lists), ignored)
    records, skipped = [], []
    for split, list_file in lists.items():
        for line_no, line in enumerate(list_file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 4:
                skipped.append(
                    Skipped(f"{list_file.name}:{line_no}", Problem.UNKNOWN_LABEL, f"malformed line {line!r}")
                )
                continue
            pid, source, raw = parts[0], parts[-1], parts[-2]
            filename = " ".join(parts[1:-2])  # a few file names hold spaces
            label = LABELS.get(raw.lower(), raw)
            meta = {OFFICIAL_SPLIT: split, "covidx_source": source, RAW_LABEL: raw}
            records.append(Record(f"{split}/{filename}", label, f"{source}:{pid}", f"COVIDx/{source}", meta))
    if not records:
        raise DataError(f"{root}: the COVIDx lists name no images")
    return Manifest(root, records, "covidx", skipped=skipped, ignored=ignored)


FORMAT = DatasetFormat(
    name="covidx",
    title="COVIDx (COVID-Net; Wang, Lin and Wong 2020)",
    url="https://github.com/lindawangg/COVID-Net/blob/master/docs/COVIDx.md",
    licence="pooled from sources with their own licences (see COVIDx.md); cite COVID-Net",
    layout="train.txt, test.txt[, val.txt] ('patient_id filename class source') over train/, test/[, val/]",
    find=find,
    load=load,
    official_split=True,
)
