"""Inspect -> label map -> patient-level split: the data stage every job starts with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from covidxr.config import DataConfig
from covidxr.data.labels import LabelMap
from covidxr.data.manifest import Manifest
from covidxr.data.sources import load_manifest
from covidxr.data.split import Split, load_or_make_split
from covidxr.data.validate import DataReport, inspect
from covidxr.errors import DataError

REPORT_FILE = "data_report.json"


@dataclass
class PreparedData:
    manifest: Manifest  # usable images only
    report: DataReport
    label_map: LabelMap
    split: Split
    split_reused: bool


def inspect_path(path: Path | str, cfg: DataConfig | None = None) -> tuple[Manifest, DataReport]:
    cfg = cfg or DataConfig()
    manifest = load_manifest(path, cfg.views)
    return inspect(manifest, cfg.task, cfg.positive, cfg.max_pixels)


def prepare(path: Path | str, out_dir: Path | str, cfg: DataConfig | None = None) -> PreparedData:
    """Validate the data, stop with one clear message if unusable, and write the report and split to `out_dir`."""
    cfg = cfg or DataConfig()
    out_dir = Path(out_dir)
    manifest, report = inspect_path(path, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    report.write_json(out_dir / REPORT_FILE)
    if not report.ok:
        raise DataError(f"{path}: unusable data set: {report.problem}")
    label_map = LabelMap.from_labels(manifest.labels, cfg.task, cfg.positive)
    split, reused = load_or_make_split(
        manifest, label_map, out_dir, report.duplicate_links(), cfg.split_fractions, cfg.seed
    )
    return PreparedData(manifest, report, label_map, split, reused)
