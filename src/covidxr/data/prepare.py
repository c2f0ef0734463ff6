"""Inspect -> label map -> patient-level split: the data stage every job starts with."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from covidxr.data.config import DataConfig
from covidxr.data.labels import LabelMap
from covidxr.data.manifest import Manifest
from covidxr.data.sources import load_data
from covidxr.data.split import SPLITS_FILE, Split, load_or_make_split, read_split
from covidxr.data.validate import DataReport, inspect
from covidxr.errors import DataError
from covidxr.rundir import RunDir

REPORT_FILE = RunDir.data_report
log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    manifest: Manifest  # usable images only
    report: DataReport
    label_map: LabelMap
    split: Split
    split_reused: bool


def list_data(cfg: DataConfig) -> Manifest:
    """The config's data sets, listed through their adapters, relabelled and joined (no pixels decoded)."""
    return load_data(cfg.paths, cfg.views, cfg.format, cfg.label_rules)


def inspect_data(cfg: DataConfig) -> tuple[Manifest, DataReport]:
    return inspect(list_data(cfg), cfg.task, cfg.positive, cfg.max_pixels)


def usable_data(cfg: DataConfig) -> Manifest:
    """The usable images of the config's data sets (decoded and checked); unreadable ones skipped, and said."""
    manifest, report = inspect_data(cfg)
    if report.skipped:
        log.warning("note: %d unreadable file(s) in %s skipped (see covidxr data inspect)", len(report.skipped),
                    " + ".join(cfg.paths))  # fmt: skip
    return manifest


def prepare(out_dir: Path | str, cfg: DataConfig, write: bool = True) -> PreparedData:
    """Validate the data, stop with one clear message if unusable, and write the report and split to `out_dir`.
    With `write=False` (a helper rank of a distributed run) the split already in `out_dir` is read, nothing
    is written."""
    out_dir = Path(out_dir)
    manifest, report = inspect_data(cfg)
    names = " + ".join(cfg.paths)
    for name, (listed, used) in report.lost_films().items():
        log.warning("note: data set %s: %d of its %d listed film(s) skipped (see data_report.json)", name,
                    listed - used, listed)  # fmt: skip
    if report.ok:
        label_map = LabelMap.from_labels(manifest.labels, cfg.task, cfg.positive)
        if write:
            out_dir.mkdir(parents=True, exist_ok=True)
            split, reused = load_or_make_split(
                manifest, label_map, out_dir, report.duplicate_links(), cfg.split_fractions, cfg.seed, cfg.split
            )
        else:
            split, reused = read_split(out_dir / SPLITS_FILE, manifest), True
        report.split = split.method
        if write:
            report.write_json(out_dir / REPORT_FILE)
        return PreparedData(manifest, report, label_map, split, reused)
    if write:
        out_dir.mkdir(parents=True, exist_ok=True)
        report.write_json(out_dir / REPORT_FILE)
    raise DataError(f"{names}: unusable data set: {report.problem}")
