"""Decode every listed image once and write the data report: what is usable, what is skipped and why,
which images are duplicates, and whether image geometry alone already tells the classes apart.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from PIL import Image

from covidxr.atomic import write_json
from covidxr.data.duplicates import near_pairs
from covidxr.data.labels import DEFAULT_POSITIVE, LabelMap, Task
from covidxr.data.lungs import mask_box, read_lung_mask
from covidxr.data.manifest import FILM, LUNG_MASK, RAW_LABEL, Manifest, Record, Skipped
from covidxr.data.readers import DEFAULT_MAX_PIXELS, ImageInfo, read_image
from covidxr.data.sources import DATASET
from covidxr.errors import DataError, ImageReadError
from covidxr.progress import progress

MIN_PATIENTS_PER_CLASS = 3  # one patient group per class in each of train / val / test
HASH_SIDE = 16  # 256-bit difference hash: 64 bits cannot tell one chest X-ray from another
NEAR_DUPLICATE_BITS = 10  # on cxr-dev, distinct images are >= 15 bits apart and re-saved copies 0


@dataclass(frozen=True)
class _Decoded:
    record: Record
    info: ImageInfo | None
    pixel_hash: str = ""
    dhash: np.ndarray | None = None  # packed bits, HASH_SIDE**2 / 8 bytes
    error: ImageReadError | None = None
    lungs: tuple[float, float, float] | None = None  # the shipped lung mask's area, box width and height (fractions)


@dataclass
class DataReport:
    source: str
    layout: str
    task: str
    classes: list[str]
    listed: int
    usable: int
    per_label: dict[str, dict[str, int]]
    patients: int
    skipped: list[Skipped]
    ignored: list[str]
    excluded: dict[str, int]
    exact_duplicates: list[list[str]]
    near_duplicates: list[tuple[str, str, int]]
    geometry: dict[str, dict[str, float]]
    raw_labels: dict[str, list[str]] = field(default_factory=dict)  # label -> the data sets' own spellings
    label_by_source: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> label -> images
    split: str | None = None  # patient | official, once a split is made
    notes: list[tuple[str, str]] = field(default_factory=list)  # (path, caveat): read, but not as stored
    warnings: list[str] = field(default_factory=list)
    problem: str | None = None  # why the data set is unusable; None when it can be used
    sets: dict[str, list[int]] = field(default_factory=dict)  # with several --data: set -> [listed, usable]

    @property
    def ok(self) -> bool:
        return self.problem is None

    def duplicate_links(self) -> list[list[str]]:
        """Groups of paths that must share a split (exact and near duplicates)."""
        return self.exact_duplicates + [[a, b] for a, b, _ in self.near_duplicates]

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "layout": self.layout,
            "task": self.task,
            "classes": self.classes,
            "listed": self.listed,
            "usable": self.usable,
            "patients": self.patients,
            "per_label": self.per_label,
            "raw_labels": self.raw_labels,
            "label_by_source": self.label_by_source,
            "split": self.split,
            "notes": [{"path": p, "note": n} for p, n in self.notes],
            "skipped": [s.to_dict() for s in self.skipped],
            "ignored": self.ignored,
            "excluded_by_filter": self.excluded,
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": [{"a": a, "b": b, "distance": d} for a, b, d in self.near_duplicates],
            "geometry": self.geometry,
            "warnings": self.warnings,
            "problem": self.problem,
            "sets": self.sets,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DataReport:
        """The report as `to_dict` wrote it (data_report.json)."""
        return cls(
            raw["source"], raw["layout"], raw["task"], raw["classes"], raw["listed"], raw["usable"], raw["per_label"],
            raw["patients"], [Skipped(**s) for s in raw["skipped"]], raw["ignored"], raw["excluded_by_filter"],
            raw["exact_duplicates"], [(d["a"], d["b"], d["distance"]) for d in raw["near_duplicates"]],
            raw["geometry"], raw.get("raw_labels", {}), raw.get("label_by_source", {}), raw.get("split"),
            [(n["path"], n["note"]) for n in raw.get("notes", [])], raw.get("warnings", []), raw.get("problem"),
            raw.get("sets", {}),
        )  # fmt: skip

    def write_json(self, path: Path) -> None:
        write_json(path, self.to_dict())

    def format_table(self) -> str:
        lines = [
            f"data: {self.source} ({self.layout} layout, {self.task} task: {' / '.join(self.classes)})",
            f"images: {self.listed} listed, {self.usable} usable, {len(self.skipped)} skipped; "
            f"{len(self.per_label)} classes in the data; {self.patients} patients",
            *([self.format_sets()] if self.sets else []),
            "",
            f"{'label':<16}{'images':>8}{'patients':>10}{'median size':>14}{'square':>8}  from",
        ]
        for label, counts in self.per_label.items():
            geo = self.geometry.get(label, {})
            size = f"{geo.get('median_width', 0):.0f}x{geo.get('median_height', 0):.0f}"
            square = f"{geo.get('square_fraction', 0):.0%}"
            raw = ", ".join(self.raw_labels.get(label, []))
            lines.append(f"{label:<16}{counts['images']:>8}{counts['patients']:>10}{size:>14}{square:>8}  {raw}")
        lungs = {label: g for label, g in self.geometry.items() if g.get("lung_masks")}
        if lungs:
            lines += ["", f"{'lung masks':<16}{'films':>8}{'lung area':>11}{'box width':>11}{'box height':>12}"]
            lines += [f"{label:<16}{g['lung_masks']:>8.0f}{g['median_lung_area']:>11.1%}"
                      f"{g['median_lung_box_width']:>11.2f}{g['median_lung_box_height']:>12.2f}"
                      for label, g in lungs.items()]  # fmt: skip
        if len(self.label_by_source) > 1:
            lines += ["", self.format_sources()]
        if self.skipped:
            lines += ["", f"skipped {len(self.skipped)} file(s):"]
            lines += [f"  {s.path}: {s.problem}" + (f" ({s.detail})" if s.detail else "") for s in self.skipped]
        if self.ignored:
            shown = ", ".join(self.ignored[:5]) + (" ..." if len(self.ignored) > 5 else "")
            lines += ["", f"ignored {len(self.ignored)} non-image file(s) or hidden folder(s): {shown}"]
        if self.notes:
            lines += ["", f"read with a caveat: {len(self.notes)} file(s)"]
            lines += [f"  {p}: {n}" for p, n in self.notes[:5]] + (["  ..."] if len(self.notes) > 5 else [])
        if self.excluded:
            lines.append("excluded on purpose: " + ", ".join(f"{n} ({why})" for why, n in self.excluded.items()))
        if self.exact_duplicates or self.near_duplicates:
            lines.append(
                f"duplicates: {len(self.exact_duplicates)} group(s) of identical images, "
                f"{len(self.near_duplicates)} near-duplicate pair(s) (kept together when splitting)"
            )
        if self.split:
            lines.append(f"split: {self.split}")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(f"UNUSABLE: {self.problem}" if self.problem else "usable: yes")
        return "\n".join(lines)

    def format_sets(self) -> str:
        """Films used of those listed, per --data set: a set that lost films says so by name."""
        return "per data set: " + ", ".join(f"{name} {used} of {listed}" for name, (listed, used) in self.sets.items())

    def lost_films(self) -> dict[str, tuple[int, int]]:
        """The --data sets some of whose listed films are not used: name -> (listed, usable)."""
        return {name: (listed, used) for name, (listed, used) in self.sets.items() if used < listed}

    def format_sources(self) -> str:
        """The label x source table: where each label's images came from."""
        labels = list(self.per_label)
        width = max(12, *(len(label) + 2 for label in labels))
        lines = [f"{'source':<42}" + "".join(f"{label:>{width}}" for label in labels)]
        for source, counts in self.label_by_source.items():
            cells = "".join(f"{counts.get(label, 0):>{width}}" for label in labels)
            lines.append(f"{short_source(source):<42}{cells}")
        return "\n".join(lines)


def read_data_report(path: Path) -> DataReport | None:
    """data_report.json of a run, or None where the run has none (an ensemble borrows its first member's)."""
    return DataReport.from_dict(json.loads(path.read_text())) if path.is_file() else None


def short_source(source: str, limit: int = 40) -> str:
    """A source's name for tables: a URL's host and first path part, or the text before its first aside."""
    if source.startswith(("http://", "https://")):
        parsed = urlparse(source)
        first = parsed.path.strip("/").split("/")[0]
        text = parsed.netloc.removeprefix("www.") + (f"/{first}" if first else "")
    else:
        text = re.split(r" \(|, |; ", source, maxsplit=1)[0] or "(none)"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def inspect(
    manifest: Manifest,
    task: Task = "binary",
    positive: str = DEFAULT_POSITIVE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> tuple[Manifest, DataReport]:
    """Decode every image; return the manifest of usable images and the report. Never raises for bad files."""
    workers = workers or min(8, os.cpu_count() or 1)
    decoded = []
    with ThreadPoolExecutor(max_workers=workers) as pool, progress(len(manifest.records), "checking", "img") as bar:
        for item in pool.map(lambda r: _decode(manifest, r, max_pixels), manifest.records):
            decoded.append(item)
            bar.update(1)
    skipped = list(manifest.skipped)
    skipped += [Skipped(d.record.path, d.error.problem, d.error.detail) for d in decoded if d.error]
    good = [d for d in decoded if d.error is None]
    usable = manifest.subset([replace(d.record, meta=d.record.meta | {FILM: d.pixel_hash[:32]}) for d in good])
    exact, near = _duplicates(good)
    report = DataReport(
        source=str(manifest.root),
        layout=manifest.layout,
        task=task,
        classes=[],
        listed=len(manifest.records) + len(manifest.skipped),
        usable=len(good),
        per_label=_per_label(usable.records),
        patients=usable.patient_count(),
        skipped=skipped,
        ignored=list(manifest.ignored),
        excluded=manifest.excluded,
        exact_duplicates=exact,
        near_duplicates=near,
        geometry=_geometry(good),
        raw_labels=_raw_labels(usable.records),
        label_by_source=label_by_source(usable.records),
        notes=[(d.record.path, d.info.note) for d in good if d.info and d.info.note],
    )
    report.sets = _per_set(manifest, usable)
    report.warnings = _warnings(usable, report, good)
    try:
        label_map = LabelMap.from_labels(usable.labels, task, positive)
        report.classes = list(label_map.classes)
        report.problem = _usability_problem(usable, label_map)
    except DataError as exc:
        report.problem = str(exc)
    empty = [name for name, (_, used) in report.sets.items() if used == 0]
    if empty and report.ok:  # a set that vanished whole is an error, never a quiet smaller run
        report.problem = f"data set {empty[0]!r} yields no usable film of the {report.sets[empty[0]][0]} it lists"
    return usable, report


def _decode(manifest: Manifest, record: Record, max_pixels: int) -> _Decoded:
    try:
        image = read_image(manifest.abspath(record), max_pixels)
    except ImageReadError as exc:
        return _Decoded(record, None, error=exc)
    quantised = np.round(image.pixels * 65535).astype(np.uint16)
    pixel_hash = hashlib.sha256(quantised.tobytes() + str(quantised.shape).encode()).hexdigest()
    return _Decoded(record, image.info, pixel_hash, difference_hash(image.pixels), lungs=_lung_facts(manifest, record))


def _lung_facts(manifest: Manifest, record: Record) -> tuple[float, float, float] | None:
    """Area and box of the lung mask a data set ships: per label, a cue in itself (children's lungs fill more of
    a film than an adult's in an ICU film with arms and tubes)."""
    rel = record.meta.get(LUNG_MASK)
    if not rel:
        return None
    try:
        mask = read_lung_mask(manifest.root, rel)
    except ImageReadError:
        return None  # a broken mask: the film still counts; `covidxr lungs train` names the file
    box = mask_box(mask)
    return (float(mask.mean()), box[2] - box[0], box[3] - box[1]) if box else (0.0, 0.0, 0.0)


def difference_hash(pixels: np.ndarray, side: int = HASH_SIDE) -> np.ndarray:
    """dHash: signs of horizontal gradients on a small thumbnail; robust to resizing and re-encoding."""
    image = Image.fromarray(pixels.astype(np.float32), mode="F")
    thumb = np.asarray(image.resize((side + 1, side), Image.Resampling.BOX))
    return np.packbits(thumb[:, 1:] > thumb[:, :-1])


def _duplicates(good: list[_Decoded]) -> tuple[list[list[str]], list[tuple[str, str, int]]]:
    by_hash: dict[str, list[str]] = defaultdict(list)
    for d in good:
        by_hash[d.pixel_hash].append(d.record.path)
    exact = [sorted(paths) for paths in by_hash.values() if len(paths) > 1]
    exact_pairs = {frozenset((a, b)) for group in exact for a in group for b in group if a != b}
    hashes = np.stack([d.dhash for d in good if d.dhash is not None]) if good else np.zeros((0, 1), np.uint8)
    near = []
    for i, j, distance in near_pairs(hashes, NEAR_DUPLICATE_BITS):
        a, b = good[i].record.path, good[j].record.path
        if frozenset((a, b)) not in exact_pairs:
            near.append((a, b, distance))
    return sorted(exact), near


def _per_label(records: list[Record]) -> dict[str, dict[str, int]]:
    images = Counter(r.label for r in records)
    patients: dict[str, set[str]] = defaultdict(set)
    for r in records:
        patients[r.label].add(r.group)
    return {label: {"images": images[label], "patients": len(patients[label])} for label in sorted(images)}


def _raw_labels(records: list[Record]) -> dict[str, list[str]]:
    raw: dict[str, set[str]] = defaultdict(set)
    for r in records:
        raw[r.label].add(r.meta.get(RAW_LABEL, r.label))
    return {label: sorted(names) for label, names in sorted(raw.items())}


def label_by_source(records: list[Record]) -> dict[str, dict[str, int]]:
    """Images per (source, label): where each label came from."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        table[r.source][r.label] += 1
    return {source: dict(sorted(counts.items())) for source, counts in sorted(table.items())}


def confounded_labels(label_by_source: dict[str, dict[str, int]]) -> dict[str, str]:
    """Labels whose every image comes from one source that holds no other label: label == hospital there."""
    sources_of: dict[str, set[str]] = defaultdict(set)
    for source, counts in label_by_source.items():
        for label in counts:
            sources_of[label].add(source)
    if len(sources_of) < 2:
        return {}
    out = {}
    for label, sources in sorted(sources_of.items()):
        (only,) = sources if len(sources) == 1 else (None,)
        if only is not None and set(label_by_source[only]) == {label}:
            out[label] = only
    return out


def _geometry(good: list[_Decoded]) -> dict[str, dict[str, float]]:
    by_label: dict[str, list[ImageInfo]] = defaultdict(list)
    for d in good:
        assert d.info is not None
        by_label[d.record.label].append(d.info)
    out = {}
    for label, infos in sorted(by_label.items()):
        widths = np.array([i.width for i in infos])
        heights = np.array([i.height for i in infos])
        out[label] = {
            "median_width": float(np.median(widths)),
            "median_height": float(np.median(heights)),
            "square_fraction": float(np.mean(widths == heights)),
            "median_aspect": float(np.median(widths / heights)),
        }
        lungs = np.array([d.lungs for d in good if d.record.label == label and d.lungs is not None])
        if len(lungs):
            area, width, height = np.median(lungs, axis=0)
            out[label] |= {"lung_masks": float(len(lungs)), "median_lung_area": float(area),
                           "median_lung_box_width": float(width), "median_lung_box_height": float(height)}  # fmt: skip
    return out


def _warnings(usable: Manifest, report: DataReport, good: list[_Decoded]) -> list[str]:
    warnings = []
    if not usable.has_patient_ids:
        warnings.append(
            "no patient ids for some images: each such image is its own group, so images of one patient "
            "may land in different splits and inflate test scores"
        )
    for label, source in confounded_labels(report.label_by_source).items():
        warnings.append(
            f"every {label!r} image comes from one source ({short_source(source)}) that holds no other label: "
            "label and source are the same thing here, so a model can learn the hospital instead of the finding; "
            f"add {label!r}-negative images from that source, or {label!r} images from another"
        )
    label_of = {d.record.path: d.record.label for d in good}
    conflicts = [g for g in report.duplicate_links() if len({label_of[p] for p in g}) > 1]
    if conflicts:
        warnings.append(f"{len(conflicts)} duplicate group(s) carry different labels, e.g. {', '.join(conflicts[0])}")
    square = {label: g["square_fraction"] for label, g in report.geometry.items()}
    if len(square) > 1 and max(square.values()) - min(square.values()) > 0.5:
        warnings.append(
            "image geometry differs by class (share of square images: "
            + ", ".join(f"{k} {v:.0%}" for k, v in square.items())
            + "): a model can tell the classes apart without looking at the lungs"
        )
    return warnings


def _usability_problem(usable: Manifest, label_map: LabelMap) -> str | None:
    if not usable.records:
        return "no readable images"
    groups: dict[str, set[str]] = defaultdict(set)
    for r in usable.records:
        groups[label_map.class_name(r.label)].add(r.group)
    present = [c for c in label_map.classes if groups[c]]
    if len(present) < 2:
        return f"only one class has readable images ({', '.join(present)}); a classifier needs at least two"
    thin = {c: len(groups[c]) for c in label_map.classes if len(groups[c]) < MIN_PATIENTS_PER_CLASS}
    if thin:
        return (
            "too few patients per class for a train/val/test split (need at least "
            f"{MIN_PATIENTS_PER_CLASS} each): " + ", ".join(f"{c} has {n}" for c, n in thin.items())
        )
    return None


def _per_set(listed: Manifest, usable: Manifest) -> dict[str, list[int]]:
    """[listed, usable] films per --data set, where several were joined (each record names its set)."""
    names = Counter(r.meta.get(DATASET) for r in listed.records)
    if len(names) < 2 or None in names:
        return {}
    used = Counter(r.meta.get(DATASET) for r in usable.records)
    return {str(name): [n, used.get(name, 0)] for name, n in names.items()}
