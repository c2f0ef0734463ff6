"""Leave-one-source-out: for each source, retrain the run's recipe on every other source and score the source
it never saw. A test split drawn from the same hospitals cannot show how a model treats a new hospital; holding
a whole source out can, and where a label comes from one source only the fold says so instead of scoring it.

Writes `by_source.json` and one sub-run per held-out source under `by_source/` in the run directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from covidxr.atomic import write_json
from covidxr.config import Config
from covidxr.data.labels import LabelMap
from covidxr.data.manifest import Manifest
from covidxr.data.prepare import PreparedData, inspect_data
from covidxr.data.split import Split, make_split
from covidxr.data.validate import label_by_source, short_source
from covidxr.errors import CovidxrError
from covidxr.evaluation.calibration import calibrate
from covidxr.evaluation.metrics import roc_auc
from covidxr.run import Run
from covidxr.rundir import RunDir, folder_name

BY_SOURCE_FILE = RunDir.by_source
BY_SOURCE_DIR = RunDir.by_source_dir


@dataclass
class HeldOutSource:
    """One fold: the model trained without `source`, scored on all of it."""

    source: str
    n_images: int
    trained_on: list[str]
    called: str  # the class whose rate is reported (the positive class, or COVID-19 in multiclass)
    rate_called: dict[str, float] = field(default_factory=dict)  # held-out label -> share called `called`
    auc: float | None = None  # where the held-out source holds both sides: a within-source AUC by construction
    n_positive: int = 0  # held-out images of the `called` class, and of the others (the AUC's pairs)
    n_negative: int = 0
    skipped: str | None = None  # why this source could not be held out


def leave_one_source_out(run: Run | Path | str, threshold_method: str = "f1") -> list[HeldOutSource]:
    """Retrain the run's configuration once per source with that source held out; score each held-out source
    at a threshold chosen (after temperature scaling) on the fold's own validation split."""
    from covidxr.evaluation.job import score
    from covidxr.training.job import train

    run = Run.open(run)
    run_dir, cfg = run.root, run.config
    manifest, report = inspect_data(cfg.data)
    table = label_by_source(manifest.records)
    if not any(sum(label in counts for counts in table.values()) >= 2 for label in manifest.label_counts()):
        raise CovidxrError(
            f"{run_dir}: no label comes from two or more sources ({', '.join(short_source(s) for s in table)}), so "
            "holding out a source removes whole labels; add a data set from another hospital (--data A --data B)"
        )
    label_map = LabelMap.from_labels(manifest.labels, cfg.data.task, cfg.data.positive)
    folds = []
    for source in table:
        held = [r for r in manifest.records if r.source == source]
        rest = manifest.subset([r for r in manifest.records if r.source != source])
        fold = HeldOutSource(source, len(held), sorted({r.source for r in rest.records}), called="")
        left = {label_map.class_name(r.label) for r in rest.records}
        lost = [c for c in label_map.classes if c not in left]
        if lost:
            fold.skipped = (
                f"it holds every {' and '.join(lost)} image: the other sources leave nothing to learn it from"
            )
            folds.append(fold)
            continue
        split = _train_val(rest, label_map, report.duplicate_links(), cfg)
        fold_dir = run_dir / BY_SOURCE_DIR / folder_name(short_source(source), "source")
        trained = train(
            cfg, fold_dir, resume=(fold_dir / RunDir.state).is_file(),
            prepared=PreparedData(rest, report, label_map, split, False),
        )  # fmt: skip
        fold_run = Run(trained.run_dir, manifest=rest)
        val = score(fold_run, rest, split.records(rest, "val"))
        fold_run.spec = calibrate(fold_run.root, fold_run.spec, val.logits, val.targets, threshold_method)
        scored = score(fold_run, manifest.subset(held), held)
        k = fold_run.spec.audit_class
        called = fold_run.spec.decide(scored.scores) == k
        labels = np.array([r.label for r in held])
        fold.called = fold_run.spec.classes[k]
        fold.rate_called = {lab: float(called[labels == lab].mean()) for lab in sorted(set(labels.tolist()))}
        y = scored.targets == k
        fold.n_positive, fold.n_negative = int(y.sum()), int((~y).sum())
        fold.auc = roc_auc(y, scored.scores[:, k]) if 0 < y.sum() < len(y) else None
        folds.append(fold)
    write_json(run_dir / BY_SOURCE_FILE, [vars(f) for f in folds])
    return folds


def read_by_source(run_dir: Path | str) -> list[HeldOutSource] | None:
    path = Path(run_dir) / BY_SOURCE_FILE
    return [HeldOutSource(**row) for row in json.loads(path.read_text())] if path.is_file() else None


def by_source_table(folds: list[HeldOutSource]) -> str:
    lines = ["leave-one-source-out (each source scored by a model trained on the others):"]
    for f in folds:
        name = short_source(f.source)
        if f.skipped:
            lines.append(f"  {name}: not held out: {f.skipped}")
            continue
        auc = f"AUC {f.auc:.3f}; " if f.auc is not None else "one class only, no AUC; "
        rates = ", ".join(f"{lab} {rate:.1%}" for lab, rate in f.rate_called.items())
        lines.append(f"  {name} ({f.n_images} images): {auc}called {f.called}: {rates}")
    pooled = pooled_auc(folds)
    lines.append(
        f"  pooled within-source AUC over the held-out sources holding both classes: {pooled:.3f}"
        if pooled is not None
        else "  no held-out source holds both classes: these folds cannot measure the finding, only its rates"
    )
    return "\n".join(lines)


def pooled_auc(folds: list[HeldOutSource]) -> float | None:
    """The held-out AUCs weighted by their positive x negative pairs (evaluation.fair's pooling)."""
    scored = [(f.auc, f.n_positive * f.n_negative) for f in folds if f.auc is not None and not f.skipped]
    pairs = sum(n for _, n in scored)
    return sum(a * n for a, n in scored) / pairs if pairs else None


def _train_val(rest: Manifest, label_map: LabelMap, links: list[list[str]], cfg: Config) -> Split:
    """A patient split of the remaining sources into train and validation only: the held-out source is the test."""
    train_f, val_f, _ = cfg.data.split_fractions
    kept = {r.path for r in rest.records}
    links = [[p for p in link if p in kept] for link in links]
    split = make_split(rest, label_map, links, _normalised((train_f, val_f, 1e-6)), cfg.data.seed)
    assignment = {p: ("train" if s == "test" else s) for p, s in split.assignment.items()}
    return replace(split, assignment=assignment, notes=(*split.notes, "leave-one-source-out fold: no test split"))


def _normalised(fractions: tuple[float, float, float]) -> tuple[float, float, float]:
    total = sum(fractions)
    a, b, c = (f / total for f in fractions)
    return a, b, c
