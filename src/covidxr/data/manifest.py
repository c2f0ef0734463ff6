"""The one data contract every later stage takes: rows of `path, label, patient_id, source` plus metadata.

Paths are stored relative to `root` (POSIX style) so that manifests and `splits.csv` files stay portable.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

CORE_COLUMNS = ("path", "label", "patient_id", "source")
OFFICIAL_SPLIT = "official_split"  # Record.meta key: train | val | test, where a data set ships its own split
RAW_LABEL = "raw_label"  # Record.meta key: the label as the data set spells it, where covidxr renamed it
LUNG_MASK = "lung_mask"  # Record.meta key: the image's lung mask (relative path), where a data set ships one
FILM = "film"  # Record.meta key: the decoded film's content hash, set when the data were checked (data.validate)


@dataclass(frozen=True)
class Record:
    path: str  # relative to Manifest.root, POSIX separators
    label: str
    patient_id: str | None = None
    source: str = ""
    meta: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def film(self) -> str | None:
        """The decoded film's content hash: the key of every per-film cache (None until the film was checked)."""
        return self.meta.get(FILM)

    @property
    def group(self) -> str:
        """The unit of independence: the patient, or the image itself when no patient is known (the split's,
        the counts' and the bootstrap's one key)."""
        return self.patient_id or f"image:{self.path}"


@dataclass(frozen=True)
class Skipped:
    """A listed or found file that will not be used, and why."""

    path: str
    problem: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "problem": self.problem, "detail": self.detail}


@dataclass
class Manifest:
    root: Path
    records: list[Record]
    layout: str
    skipped: list[Skipped] = field(default_factory=list)  # problems found while listing (unknown label, ...)
    ignored: list[str] = field(default_factory=list)  # non-image files and hidden folders, not errors
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> rows left out on purpose (lateral views, ...)

    def abspath(self, record: Record) -> Path:
        return self.root / record.path

    @property
    def labels(self) -> list[str]:
        return sorted({r.label for r in self.records})

    def label_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r.label for r in self.records).items()))

    @property
    def has_patient_ids(self) -> bool:
        return all(r.patient_id for r in self.records)

    def patient_count(self) -> int:
        return len({r.group for r in self.records})

    def fingerprint(self) -> str:
        """Content key of the listing (paths, labels, patients): changes when the data set changes."""
        digest = hashlib.sha256()
        for r in sorted(self.records, key=lambda r: r.path):
            digest.update(f"{r.path}\t{r.label}\t{r.patient_id or ''}\n".encode())
        return digest.hexdigest()[:16]

    @property
    def has_official_split(self) -> bool:
        return any(OFFICIAL_SPLIT in r.meta for r in self.records)

    def subset(self, records: list[Record]) -> Manifest:
        return Manifest(self.root, records, self.layout)
