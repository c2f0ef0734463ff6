"""Cohen et al.'s covid-chestxray-dataset: `metadata.csv` over `images/`; X-rays in frontal views by default.
Where `annotations/lungVAE-masks/<image stem>_mask.png` exists, it is the film's lung mask."""

from __future__ import annotations

from pathlib import Path

from covidxr.data.formats.base import DatasetFormat, csv_with_columns, read_csv
from covidxr.data.manifest import LUNG_MASK, RAW_LABEL, Manifest, Record, Skipped
from covidxr.data.readers import Problem
from covidxr.errors import DataError

COLUMNS = ("patientid", "finding", "view", "modality", "folder", "filename")
SOURCE = "Cohen covid-chestxray-dataset"
LUNG_MASKS = "annotations/lungVAE-masks"  # <image stem>_mask.png: lungVAE's model-made masks (Selvan et al. 2020)


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


def load(metadata: Path, views: tuple[str, ...]) -> Manifest:
    wanted = {v.lower() for v in views}
    rows, _ = read_csv(metadata)
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
        meta[RAW_LABEL] = (row.get("finding") or "").strip()
        mask = f"{LUNG_MASKS}/{Path(rel).stem}_mask.png"
        if (metadata.parent / mask).is_file():
            meta[LUNG_MASK] = mask
        pid = (row.get("patientid") or "").strip() or None
        records.append(Record(rel, label, pid, SOURCE, meta))
    if not records:
        raise DataError(f"{metadata}: no frontal X-ray rows with a usable finding (views kept: {', '.join(views)})")
    excluded_by = {"not an X-ray in a kept view": excluded} if excluded else {}
    return Manifest(metadata.parent, records, "cohen", skipped=skipped, excluded=excluded_by)


def find(path: Path) -> Path | None:
    return csv_with_columns(path, ["metadata.csv"], COLUMNS)


FORMAT = DatasetFormat(
    name="cohen",
    title="COVID-19 image data collection (Cohen et al. 2020)",
    url="https://github.com/ieee8023/covid-chestxray-dataset",
    licence="per image (see the licence column of metadata.csv); many CC BY, some unknown",
    layout="metadata.csv (patientid, finding, view, modality, folder, filename) over images/",
    find=find,
    load=load,
)
