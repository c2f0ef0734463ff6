"""Any data set, or several, to one Manifest with canonical labels.

`load_manifest` lists one data set through its adapter (`covidxr.data.formats`) and maps its labels;
`load_data` does that for every `--data` of a config and joins them, each record keeping its `source`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from covidxr.data.formats import AUTO, FRONTAL_VIEWS, find_format
from covidxr.data.labels import LabelRules
from covidxr.data.manifest import RAW_LABEL, Manifest, Record, Skipped
from covidxr.errors import DataError

DATASET = "dataset"  # Record.meta key: which --data a record came from, when several are joined


def load_manifest(
    path: Path | str, views: Iterable[str] = FRONTAL_VIEWS, fmt: str = AUTO, rules: LabelRules | None = None
) -> Manifest:
    """Recognise the layout at `path` (or use `fmt`), list it, and give every record its canonical label."""
    adapter, target = find_format(Path(path), fmt)
    manifest = adapter.load(target, tuple(views))
    return relabel(manifest, rules or LabelRules())


def relabel(manifest: Manifest, rules: LabelRules) -> Manifest:
    """Canonical labels (raw names kept in meta); dropped labels are counted as excluded, not lost."""
    records, dropped = [], 0
    for r in manifest.records:
        label = rules.apply(r.label)
        if label is None:
            dropped += 1
            continue
        meta = r.meta | {RAW_LABEL: r.meta.get(RAW_LABEL, r.label)} if label != r.label else r.meta
        records.append(Record(r.path, label, r.patient_id, r.source, meta))
    excluded = dict(manifest.excluded)
    if dropped:
        excluded["label dropped"] = excluded.get("label dropped", 0) + dropped
    if not records:
        raise DataError(
            f"{manifest.root}: every image's label was dropped (labels: {sorted({r.label for r in manifest.records})})"
        )
    return Manifest(manifest.root, records, manifest.layout, manifest.skipped, manifest.ignored, excluded)


def join(manifests: list[Manifest], names: list[str]) -> Manifest:
    """One manifest over several data sets: paths relative to their common folder, patient ids and sources
    kept apart per set (patient 1 of one hospital is not patient 1 of another)."""
    if len(manifests) == 1:
        return manifests[0]
    if len(set(names)) < len(names):
        names = [f"{n}-{i + 1}" for i, n in enumerate(names)]
    roots = [m.root.resolve() for m in manifests]
    common = Path(os.path.commonpath([str(r) for r in roots]))
    records: list[Record] = []
    skipped: list[Skipped] = []
    ignored: list[str] = []
    excluded: dict[str, int] = {}
    for manifest, root, name in zip(manifests, roots, names, strict=True):
        prefix = os.path.relpath(root, common).replace(os.sep, "/")

        def moved(rel: str, prefix: str = prefix) -> str:
            return rel if prefix == "." else f"{prefix}/{rel}"

        for r in manifest.records:
            pid = f"{name}:{r.patient_id}" if r.patient_id else None
            records.append(Record(moved(r.path), r.label, pid, r.source or name, r.meta | {DATASET: name}))
        skipped += [Skipped(moved(s.path), s.problem, s.detail) for s in manifest.skipped]
        ignored += [moved(i) for i in manifest.ignored]
        for reason, n in manifest.excluded.items():
            excluded[f"{name}: {reason}"] = n
    seen: set[str] = set()
    for r in records:
        if r.path in seen:
            raise DataError(f"{r.path}: listed by two of the data sets; give each --data once")
        seen.add(r.path)
    layout = "+".join(m.layout for m in manifests)
    return Manifest(common, records, layout, skipped, ignored, excluded)


def dataset_name(path: Path | str) -> str:
    """A short name for a data set: its folder (the folder holding it, for a CSV or metadata file)."""
    path = Path(path)
    return (path.parent.name if path.is_file() else path.name) or "data"


def load_data(
    paths: Iterable[Path | str],
    views: Iterable[str] = FRONTAL_VIEWS,
    fmt: str = AUTO,
    rules: LabelRules | None = None,
) -> Manifest:
    """Every data set of a run, listed, relabelled and joined."""
    paths = list(paths)
    if not paths:
        raise DataError("no data set given: pass --data PATH (several --data join data sets)")
    manifests = [load_manifest(p, views, fmt, rules) for p in paths]
    return join(manifests, [dataset_name(p) for p in paths])
