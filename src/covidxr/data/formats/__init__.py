"""Data-set adapters: one small module per public layout, in one registry (like the backbones).

`find_format` recognises a layout from the path; `--format NAME` picks one. Order matters only for
recognition: sets named by their tables first (a folder layout could match their image folders), then
the public folder layouts, and the generic CSV and folder-per-class last.
"""

from __future__ import annotations

from pathlib import Path

from covidxr.data.formats import (
    cohen,
    covid19_radiography,
    covidx,
    csv_manifest,
    folder,
    jsrt,
    kermany,
    nih_cxr14,
    nlm_tb,
    rsna_pneumonia,
)
from covidxr.data.formats.base import FRONTAL_VIEWS, DatasetFormat
from covidxr.data.manifest import OFFICIAL_SPLIT
from covidxr.errors import DataError

FORMATS: dict[str, DatasetFormat] = {
    m.FORMAT.name: m.FORMAT
    for m in (
        nih_cxr14,
        rsna_pneumonia,
        covidx,
        cohen,
        kermany,
        covid19_radiography,
        nlm_tb,
        jsrt,
        csv_manifest,
        folder,
    )
}
AUTO = "auto"

__all__ = ["AUTO", "FORMATS", "FRONTAL_VIEWS", "OFFICIAL_SPLIT", "DatasetFormat", "find_format"]


def find_format(path: Path, name: str = AUTO) -> tuple[DatasetFormat, Path]:
    """The adapter for `path` (recognised, or the one named) and the file or folder it lists."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if name != AUTO:
        if name not in FORMATS:
            raise DataError(f"unknown data format {name!r}; known: {', '.join(FORMATS)} (or auto)")
        target = FORMATS[name].find(path)
        if target is None:
            raise DataError(f"{path}: not in the {name} layout ({FORMATS[name].layout})")
        return FORMATS[name], target
    for fmt in FORMATS.values():
        target = fmt.find(path)
        if target is not None:
            return fmt, target
    kind = path.suffix or "plain"
    raise DataError(f"{path}: expected a folder or a .csv manifest, got a {kind} file")
