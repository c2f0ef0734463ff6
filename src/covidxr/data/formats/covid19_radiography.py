"""COVID-19 Radiography Database (Chowdhury et al. 2020, Rahman et al. 2021):
`<Class>/images/*.png` beside `<Class>/masks/*.png`, and `<Class>.metadata.xlsx` (FILE NAME, FORMAT, SIZE, URL).

Masks are never images: each becomes its image's `lung_mask` (metadata). The spreadsheet's URL, where present,
is the record's `source`: the database pools many collections, and which class came from where is exactly
what the label x source table must show.
"""

from __future__ import annotations

from pathlib import Path

from covidxr.data.formats.base import DatasetFormat, child_dirs, note_extras, walk_images
from covidxr.data.manifest import LUNG_MASK, Manifest, Record

SOURCE = "COVID-19 Radiography Database"


def _class_dirs(root: Path) -> dict[str, Path]:
    return {n: p for n, p in child_dirs(root).items() if (p / "images").is_dir()}


def find(path: Path) -> Path | None:
    if len(_class_dirs(path)) >= 2:
        return path
    inner = [p for p in child_dirs(path).values() if len(_class_dirs(p)) >= 2]
    return inner[0] if len(inner) == 1 else None


def _urls(sheet: Path) -> dict[str, str]:
    """Image stem (lower case) -> URL from a `<Class>.metadata.xlsx`; empty when absent or unreadable."""
    if not sheet.is_file():
        return {}
    try:
        from openpyxl import load_workbook

        book = load_workbook(sheet, read_only=True, data_only=True)
        rows = list(book.worksheets[0].iter_rows(values_only=True))
        book.close()
    except Exception:  # a damaged spreadsheet only costs the source column; images are still listed
        return {}
    if not rows:
        return {}
    header = [str(h or "").strip().upper() for h in rows[0]]
    if "FILE NAME" not in header or "URL" not in header:
        return {}
    name_at, url_at = header.index("FILE NAME"), header.index("URL")
    return {
        str(row[name_at]).strip().lower(): str(row[url_at]).strip()
        for row in rows[1:]
        if row and row[name_at] and row[url_at]
    }


def load(root: Path, views: tuple[str, ...] = ()) -> Manifest:
    ignored: list[str] = []
    classes = _class_dirs(root)
    sheets = {f"{n}.metadata.xlsx" for n in classes}
    note_extras(root, set(classes) | sheets, ignored)
    records = []
    for name, folder in classes.items():
        urls = _urls(root / f"{name}.metadata.xlsx")
        masks = (
            {p.name.lower(): p for p in walk_images(root, folder / "masks", [])} if (folder / "masks").is_dir() else {}
        )
        for entry in sorted(folder.iterdir()):
            if entry.name not in ("images", "masks"):
                ignored.append(entry.relative_to(root).as_posix() + ("/" if entry.is_dir() else ""))
        for file in walk_images(root, folder / "images", ignored):
            meta = {}
            if mask := masks.get(file.name.lower()):
                meta[LUNG_MASK] = mask.relative_to(root).as_posix()
            source = urls.get(file.stem.lower()) or SOURCE
            records.append(Record(file.relative_to(root).as_posix(), name, None, source, meta))
    return Manifest(root, records, "covid19-radiography", ignored=ignored)


FORMAT = DatasetFormat(
    name="covid19-radiography",
    title="COVID-19 Radiography Database (Chowdhury et al. 2020; Rahman et al. 2021)",
    url="https://www.kaggle.com/datasets/tawsifurrahman/covid19-radiography-database",
    licence="pooled from sources with their own terms (see its README and metadata URLs); cite both papers",
    layout="<COVID|Normal|Viral Pneumonia|Lung_Opacity>/images/*.png, .../masks/*.png, <Class>.metadata.xlsx",
    find=find,
    load=load,
)
