"""Patient-level stratified train/val/test split, written to `splits.csv` and reused when present.

Images are grouped by patient, and duplicate images (even of different patients) are merged into one group,
so no patient and no picture is ever on both sides of an evaluation.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from covidxr.atomic import write_csv
from covidxr.data.labels import LabelMap
from covidxr.data.manifest import OFFICIAL_SPLIT, Manifest, Record
from covidxr.errors import DataError
from covidxr.rundir import RunDir

SPLITS = ("train", "val", "test")
SplitMethod = Literal["patient", "official"]
SPLIT_METHODS: tuple[str, ...] = get_args(SplitMethod)
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
SPLITS_FILE = RunDir.splits


@dataclass(frozen=True)
class Split:
    """Which split each image belongs to, and which group (patient or duplicate cluster) it came with."""

    assignment: dict[str, str]  # path -> split name
    groups: dict[str, str]  # path -> group id
    method: str = "patient"  # patient | official
    notes: tuple[str, ...] = ()

    def records(self, manifest: Manifest, name: str) -> list[Record]:
        return [r for r in manifest.records if self.assignment[r.path] == name]

    def counts(self, manifest: Manifest, label_map: LabelMap) -> dict[str, dict[str, int]]:
        table: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
        for r in manifest.records:
            table[self.assignment[r.path]][label_map.class_name(r.label)] += 1
        return {s: {c: table[s][c] for c in label_map.classes} for s in SPLITS}

    def format_table(self, manifest: Manifest, label_map: LabelMap) -> str:
        counts = self.counts(manifest, label_map)
        head = f"{'split':<8}" + "".join(f"{c:>16}" for c in label_map.classes) + f"{'patients':>10}"
        lines = [f"split: {self.method}" + "".join(f"; {n}" for n in self.notes), head]
        for s in SPLITS:
            patients = {self.groups[r.path] for r in manifest.records if self.assignment[r.path] == s}
            lines.append(f"{s:<8}" + "".join(f"{counts[s][c]:>16}" for c in label_map.classes) + f"{len(patients):>10}")
        return "\n".join(lines)


def group_ids(records: list[Record], duplicate_links: list[list[str]]) -> dict[str, str]:
    """Union patients with each other through duplicate images; images without a patient id stand alone."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    key_of = {r.path: r.group for r in records}
    for key in key_of.values():
        find(key)
    for link in duplicate_links:
        keys = [key_of[p] for p in link if p in key_of]
        for other in keys[1:]:
            parent[find(other)] = find(keys[0])
    return {path: find(key) for path, key in key_of.items()}


def make_split(
    manifest: Manifest,
    label_map: LabelMap,
    duplicate_links: list[list[str]] | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    method: SplitMethod = "patient",
) -> Split:
    """Assign whole groups to splits, class by class, filling whichever split is furthest below its target.

    `official`: the data set's own test images are the test split (with every other image of their patients,
    so no patient straddles), and validation is carved by patient from the rest at the val:train ratio.
    """
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise DataError(f"split fractions must be three positive numbers summing to 1, got {fractions}")
    if method not in SPLIT_METHODS:
        raise DataError(f"unknown split method {method!r}; use one of {', '.join(SPLIT_METHODS)}")
    groups = group_ids(manifest.records, duplicate_links or [])
    members: dict[str, list[Record]] = defaultdict(list)
    for r in manifest.records:
        members[groups[r.path]].append(r)
    rng = np.random.default_rng(seed)
    notes = []
    if method == "official":
        if not manifest.has_official_split:
            raise DataError(
                f"{manifest.root}: this data set ({manifest.layout} layout) ships no split of its own; "
                "use --split patient"
            )
        test_groups = {g for g, recs in members.items() if any(r.meta.get(OFFICIAL_SPLIT) == "test" for r in recs)}
        moved = sum(1 for g in test_groups for r in members[g] if r.meta.get(OFFICIAL_SPLIT, "train") != "test")
        split_of_group = dict.fromkeys(test_groups, "test")
        rest = {g: recs for g, recs in members.items() if g not in test_groups}
        split_of_group |= _assign(rest, label_map, ("train", "val"), fractions[:2], rng)
        notes.append("test = the data set's own test list; validation carved by patient from its training part")
        if moved:
            notes.append(f"{moved} training image(s) moved to test: their patient also has official test images")
    else:
        split_of_group = _assign(members, label_map, SPLITS, fractions, rng)
    split = Split({r.path: split_of_group[groups[r.path]] for r in manifest.records}, groups, method, tuple(notes))
    assert_no_leak(manifest, split)
    return split


def _assign(
    members: dict[str, list[Record]],
    label_map: LabelMap,
    names: tuple[str, ...],
    fractions: tuple[float, ...],
    rng: np.random.Generator,
) -> dict[str, str]:
    """Groups to the named splits at the given (relative) fractions, stratified by each group's majority class."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for gid, recs in members.items():
        majority = Counter(label_map.class_name(r.label) for r in recs).most_common(1)[0][0]
        by_class[majority].append(gid)
    weights = np.asarray(fractions, dtype=float) / sum(fractions)
    split_of_group: dict[str, str] = {}
    for cls in sorted(by_class):
        gids = sorted(by_class[cls])
        gids = [gids[i] for i in rng.permutation(len(gids))]
        gids.sort(key=lambda g: -len(members[g]))  # stable: big groups first, random order among equals
        total = sum(len(members[g]) for g in gids)
        target = {s: w * total for s, w in zip(names, weights, strict=True)}
        filled = dict.fromkeys(names, 0)
        for gid in gids:
            empty = [s for s in names if filled[s] == 0]
            # Make sure each split gets one group of each class first, then fill by largest deficit.
            pool = empty if empty and len(gids) >= len(names) else names
            choice = max(pool, key=lambda s: (target[s] - filled[s]) / target[s])
            split_of_group[gid] = choice
            filled[choice] += len(members[gid])
    return split_of_group


def assert_no_leak(manifest: Manifest, split: Split) -> None:
    """No patient and no duplicate group may appear in two splits."""
    seen: dict[str, set[str]] = defaultdict(set)
    for r in manifest.records:
        seen[split.groups[r.path]].add(split.assignment[r.path])
        if r.patient_id:
            seen[f"patient:{r.patient_id}"].add(split.assignment[r.path])
    leaks = sorted(k for k, v in seen.items() if len(v) > 1)
    if leaks:
        raise DataError(f"split leaks {len(leaks)} patient/duplicate group(s) across splits, e.g. {leaks[:3]}")


def write_split(split: Split, manifest: Manifest, path: Path) -> None:
    rows = [
        {"path": r.path, "label": r.label, "patient_id": r.patient_id or "", "group": split.groups[r.path],
         "split": split.assignment[r.path], "method": split.method}
        for r in manifest.records
    ]  # fmt: skip
    write_csv(path, ["path", "label", "patient_id", "group", "split", "method"], rows)


def read_split(path: Path, manifest: Manifest) -> Split:
    """Load a saved split and check that it covers exactly this manifest's images."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assignment = {row["path"]: row["split"] for row in rows}
    groups = {row["path"]: row["group"] for row in rows}
    paths = {r.path for r in manifest.records}
    missing = sorted(paths - assignment.keys())
    if missing or any(s not in SPLITS for s in assignment.values()):
        raise DataError(
            f"{path} does not match this data set ({len(missing)} image(s) not in it, e.g. {missing[:3]}); "
            "delete it to split again"
        )
    method = (rows[0].get("method") or "patient") if rows else "patient"
    split = Split({p: assignment[p] for p in paths}, {p: groups[p] for p in paths}, method)
    assert_no_leak(manifest, split)
    return split


def load_or_make_split(
    manifest: Manifest,
    label_map: LabelMap,
    out_dir: Path,
    duplicate_links: list[list[str]] | None = None,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    method: SplitMethod = "patient",
) -> tuple[Split, bool]:
    """Reuse `out_dir/splits.csv` when it exists (reproducible runs); otherwise make and write one.

    Returns the split and whether it was reused.
    """
    path = out_dir / SPLITS_FILE
    if path.exists():
        split = read_split(path, manifest)
        if split.method != method:
            raise DataError(f"{path} holds a {split.method} split, not {method}; delete it to split again")
        return split, True
    split = make_split(manifest, label_map, duplicate_links, fractions, seed, method)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_split(split, manifest, path)
    return split, False
