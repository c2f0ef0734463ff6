"""`evaluate`: score a trained run on its test split (threshold from val), audit it for shortcuts, and score it
on external data sets with the same threshold.

Writes into the run: metrics.json, predictions.csv (the report stage draws the figures from them); external data
go to external/<name>/.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidxr.atomic import write_csv, write_json
from covidxr.data.formats import AUTO
from covidxr.data.lungs import LungEllipse
from covidxr.data.manifest import Manifest, Record
from covidxr.data.prepare import usable_data
from covidxr.data.readers import read_image
from covidxr.data.split import Split
from covidxr.data.validate import confounded_labels, label_by_source, short_source
from covidxr.device import current
from covidxr.errors import CovidxrError
from covidxr.evaluation.audit import (
    AUDITED_TEST,
    AUDITED_TRAIN,
    INPUT_FEATURE_NAMES,
    OCCLUSION_WARN_AUC,
    auc_with_ci,
    audit_features,
    metadata_baseline,
    patient_sample,
)
from covidxr.evaluation.bootstrap import patient_bootstrap
from covidxr.evaluation.calibration import calibrate, reliability
from covidxr.evaluation.fair import fair_score, fair_summary
from covidxr.evaluation.metrics import BINARY_METRICS, binary_metrics, confusion, multiclass_metrics, roc_auc
from covidxr.evaluation.predict import predict_logits
from covidxr.evaluation.threshold import threshold_for_specificity
from covidxr.lungs.as_seen import hide, record_lungs
from covidxr.models.spec import ModelSpec
from covidxr.models.tta import scoring_net
from covidxr.results import (
    AtSpecificity,
    Audit,
    Calibration,
    Evaluation,
    ExternalEvaluation,
    FairScore,
    LabelRates,
    Occlusion,
    RunCalibration,
    SourceRates,
    SplitMetrics,
    Threshold,
)
from covidxr.run import Run
from covidxr.rundir import RunDir, folder_name
from covidxr.training.feature_cache import CachedFeatures

log = logging.getLogger(__name__)
METRICS_FILE = RunDir.metrics
PREDICTIONS_FILE = RunDir.predictions
EXTERNAL_DIR = RunDir.external


@dataclass
class Scored:
    """Predictions for one set of images."""

    records: list[Record]
    logits: np.ndarray  # (N, C), raw
    targets: np.ndarray  # (N,)
    scores: np.ndarray  # (N, C), calibrated with the spec's temperature

    @property
    def positive(self) -> np.ndarray:
        return self.scores[:, 1]

    def groups(self) -> np.ndarray:
        return np.array([r.group for r in self.records])


def score(run: Run, manifest: Manifest, records: list[Record], transform: Any = None) -> Scored:
    """The run's network (with TTA when its calibration says so) over `records`, under the run's temperature;
    its head alone over the features it was trained on where the Run holds them (TTA off, no transform)."""
    if run.features is not None and transform is None and not run.spec.tta:
        logits, targets = _head_logits(run, run.features, records)
    else:
        net = scoring_net(run.net, run.spec)
        films = run.films(records)
        logits, targets = predict_logits(net, run.spec, manifest.root, records, run.label_map, transform, films=films)
    return rescore(run, Scored(records, logits, targets, logits))


@torch.no_grad()
def _head_logits(run: Run, features: CachedFeatures, records: list[Record]) -> tuple[np.ndarray, np.ndarray]:
    """The head over each film's pooled features (the backbone's output on it, as extracted for training)."""
    row = {r["path"]: i for i, r in enumerate(features.rows) if r["copy"] == 0}
    missing = [r.path for r in records if r.path not in row]
    if missing:
        raise CovidxrError(f"{run.root}: the features it was trained on lack {len(missing)} films, e.g. {missing[0]}")
    x = torch.from_numpy(np.ascontiguousarray(features.features[[row[r.path] for r in records]]))
    targets = np.array([run.label_map.encode(r.label) for r in records], dtype=int)
    place = current().stage("score")
    return place.forward(place.module(run.net.head).eval(), x).numpy(), targets


def rescore(run: Run, scored: Scored) -> Scored:
    """The same predictions under the run's current temperature."""
    scores = run.spec.scores(torch.from_numpy(scored.logits)).numpy()
    return Scored(scored.records, scored.logits, scored.targets, scores)


def summarise(scored: Scored, spec: ModelSpec, n_resamples: int, seed: int) -> SplitMetrics:
    """Metrics at the run's decision rule with patient-bootstrap 95% CIs, confusion matrix, calibration."""
    y, groups = scored.targets, scored.groups()
    predicted = spec.decide(scored.scores)
    n_images, n_patients = len(y), len(set(groups.tolist()))
    if spec.task == "binary":
        score, threshold = scored.positive, spec.threshold
        ci = patient_bootstrap(lambda i: binary_metrics(y[i], score[i], threshold), groups, n_resamples, seed)
        return SplitMetrics(
            n_images, n_patients, metrics=binary_metrics(y, score, threshold), ci95={k: list(v) for k, v in ci.items()},
            confusion=confusion(y, predicted, 2), calibration=reliability(y, score),
        )  # fmt: skip
    full = multiclass_metrics(y, scored.scores, spec.classes)
    ci = patient_bootstrap(lambda i: multiclass_metrics(y[i], scored.scores[i], spec.classes).macro, groups,
                           n_resamples, seed)  # fmt: skip
    return SplitMetrics(
        n_images, n_patients, metrics=full.macro, ci95={k: list(v) for k, v in ci.items()},
        confusion=confusion(y, predicted, len(spec.classes)), per_class=full.per_class,
    )  # fmt: skip


def _audit_target(spec: ModelSpec, scored: Scored) -> tuple[np.ndarray, np.ndarray]:
    """Binary view for the audit: audit class vs rest, and its score."""
    k = spec.audit_class
    return (scored.targets == k).astype(int), scored.scores[:, k]


def shortcut_audit(run: Run, manifest: Manifest, split: Split, scored: Scored, n_resamples: int) -> Audit:
    """Metadata baselines and lung occlusion on a patient sample of at most AUDITED_TRAIN / AUDITED_TEST films
    (all of them in smaller sets), its size kept in the result."""
    seed = run.config.data.seed
    every = split.records(manifest, "train")
    train = [every[i] for i in patient_sample(every, AUDITED_TRAIN, seed)]
    test = _subset(scored, patient_sample(scored.records, AUDITED_TEST, seed))
    k = run.spec.audit_class
    y_train = np.array([int(run.label_map.encode(r.label) == k) for r in train])
    y_test, score_full = _audit_target(run.spec, test)
    pre, max_px = run.spec.preprocess, run.config.data.max_pixels
    meta_train, seen_train = audit_features(manifest.root, train, pre, max_px)
    meta_test, seen_test = audit_features(manifest.root, test.records, pre, max_px)
    meta = metadata_baseline(meta_train, y_train, meta_test, y_test, test.groups(), n_resamples, seed)
    seen = metadata_baseline(seen_train, y_train, seen_test, y_test, test.groups(), n_resamples, seed,
                             INPUT_FEATURE_NAMES)  # fmt: skip
    logits, lungs_from = score_lungs_hidden(run, manifest, test.records)
    _, score_occ = _audit_target(run.spec, rescore(run, Scored(test.records, logits, test.targets, logits)))
    full = auc_with_ci(y_test, score_full, test.groups(), n_resamples, seed)
    occ = auc_with_ci(y_test, score_occ, test.groups(), n_resamples, seed)
    occlusion = Occlusion(full.auc, full.ci, occ.auc, occ.ci, vars(LungEllipse()), bool(occ.auc >= OCCLUSION_WARN_AUC),
                          lungs_from)  # fmt: skip
    warnings = []
    if meta.warning:
        warnings.append(
            f"Labels are predictable without looking at the lungs: a classifier on image metadata alone (size, "
            f"format, intensity, borders) reaches test AUC {meta.auc:.2f} (95% CI {meta.ci[0]:.2f}-"
            f"{meta.ci[1]:.2f}). High scores on this data set may measure acquisition, not disease."
        )
    if occlusion.warning:
        warnings.append(
            f"The model does not need the lungs: with both lung fields hidden it still reaches test AUC "
            f"{occ.auc:.2f} (vs {full.auc:.2f} with them). It is using something outside the lungs."
        )
    by_source = label_by_source(manifest.records)
    for label, source in confounded_labels(by_source).items():
        warnings.append(
            f"Every {label!r} image comes from one source ({short_source(source)}) that holds no other label, so "
            f"this model cannot have learned {label!r} apart from that source: expect it to call images from other "
            f"hospitals {label!r} at rates no test split here can show. Score it on outside data (covidxr evaluate "
            f"RUN --data OTHER) before any use, and train with {label!r}-negative images from that source."
        )
    sample = {"train": len(train), "train_of": len(every), "test": len(test.records), "test_of": len(scored.records)}
    return Audit(meta, seen, occlusion, by_source, warnings, sample)


def _subset(scored: Scored, rows: list[int]) -> Scored:
    return Scored([scored.records[i] for i in rows], scored.logits[rows], scored.targets[rows], scored.scores[rows])


@torch.no_grad()
def score_lungs_hidden(run: Run, manifest: Manifest, records: list[Record], batch_size: int = 32,
                       ) -> tuple[np.ndarray, dict[str, int]]:  # fmt: skip
    """Raw logits with each film's own lungs hidden (lungs.as_seen: the run's lung model, the data set's mask, else
    the ellipse), and how many films' lungs came from where."""
    place = current().stage("audit-occlusion")
    pre, net = run.spec.preprocess, place.module(scoring_net(run.net, run.spec)).eval()
    sources: Counter[str] = Counter()
    chunks, batch = [], []
    for i, r in enumerate(records):
        pixels = read_image(manifest.root / r.path, run.config.data.max_pixels).pixels
        lungs, source = record_lungs(pre, manifest.root, r, pixels)
        sources[source] += 1
        batch.append(pre.normalise(hide(pre.to_unit_rgb(pixels), lungs)))
        if len(batch) == batch_size or i == len(records) - 1:
            chunks.append(place.forward(net, torch.stack(batch)).numpy())
            batch = []
    logits = np.concatenate(chunks) if chunks else np.zeros((0, run.spec.num_outputs))
    return logits, dict(sources)


def per_source(scored: Scored, spec: ModelSpec) -> dict[str, SourceRates]:
    """Per source of the scored images: images, share called the audit class per label, and the AUC where the
    source holds both sides (a model that only separates sources shows up as AUCs that vanish within one)."""
    k = spec.audit_class
    called = spec.decide(scored.scores) == k
    out = {}
    for source in sorted({r.source for r in scored.records}):
        rows = np.array([r.source == source for r in scored.records])
        labels = [r.label for r, keep in zip(scored.records, rows, strict=True) if keep]
        y = scored.targets[rows] == k
        rates = {
            label: float(np.mean([c for c, lab in zip(called[rows], labels, strict=True) if lab == label]))
            for label in sorted(set(labels))
        }
        auc = roc_auc(y, scored.scores[rows, k]) if 0 < y.sum() < len(y) else None
        out[source] = SourceRates(int(rows.sum()), spec.classes[k], rates, auc)
    return out


def evaluate_run(
    run: Run | Path | str,
    n_resamples: int = 1000,
    threshold_method: str = "f1",
    audit: bool = True,
    tta: bool | None = None,
) -> Evaluation:
    """Internal evaluation of a finished run: calibrates it on val (calibration.json: temperature, threshold,
    TTA), then returns and writes metrics.json and predictions.csv. `tta` switches test-time augmentation on or off
    for this and every later use of the run (None: as it is). A Run the caller holds keeps its model and
    listed data for the stages after (`covidxr run`), and sees the new calibration."""
    run = Run.open(run)
    site = run.spec.calibration if run.spec.calibration.fitted_on == "site" else None  # an adapted run's: kept
    run.spec = replace(run.spec, calibration=RunCalibration(tta=run.spec.tta if tta is None else tta))  # raw
    manifest, split = run.manifest, run.split
    val = score(run, manifest, split.records(manifest, "val"))
    uncalibrated = test = score(run, manifest, split.records(manifest, "test"))
    seed = run.config.data.seed
    if site is None:
        run.spec = calibrate(run.root, run.spec, val.logits, val.targets, threshold_method)
    else:
        run.spec = replace(run.spec, calibration=site)
    val, test = rescore(run, val), rescore(run, test)
    k = run.spec.audit_class
    calibration = Calibration(
        "temperature scaling", run.spec.temperature, run.spec.calibration.fitted_on or "val",
        test_before=reliability(test.targets == k, uncalibrated.scores[:, k]),
        test_after=reliability(test.targets == k, test.scores[:, k]),
    )  # fmt: skip
    chosen = at95 = None
    if run.spec.task == "binary":
        chosen = Threshold(run.spec.threshold, threshold_method, run.spec.calibration.fitted_on or "val")
        t95 = threshold_for_specificity(val.targets, val.positive, 0.95)
        m95 = binary_metrics(test.targets, test.positive, t95)
        at95 = AtSpecificity(t95, "val", m95["recall"], m95["specificity"])
    result = Evaluation(
        run.spec.task, run.spec.classes, run.spec.tta, calibration,
        val=summarise(val, run.spec, 0, seed),  # no CIs on val: it chose the threshold
        test=summarise(test, run.spec, n_resamples, seed),
        test_by_source=per_source(test, run.spec),
        test_fair=fair_of(test, run.spec, n_resamples, seed),
        threshold=chosen, sensitivity_at_95_specificity=at95,
        audit=shortcut_audit(run, manifest, split, test, n_resamples) if audit else None,
    )  # fmt: skip
    _write_predictions(run.root / PREDICTIONS_FILE, [("val", val), ("test", test)], run)
    write_json(run.root / METRICS_FILE, result.to_json())  # last: its presence means the evaluation is complete
    run.evaluation = result
    return result


def evaluate_external(
    run: Run | Path | str,
    data: Path | str | Sequence[Path | str],
    n_resamples: int = 1000,
    out: Path | str | None = None,
    label_map: dict[str, str] | None = None,
) -> ExternalEvaluation:
    """Score a run on other data (several sets are joined and scored as one) with the run's label mapping and
    validated threshold. The headline is the within-source AUC (evaluation.fair): positives and negatives from
    one source; an AUC over films of different sources is reported as what it is.

    Labels the run cannot score (a class it never learned) are dropped and counted; `label_map` maps the
    external set's labels first. A set holding one class only gets what it allows: per-label rates, no AUC.
    """
    paths = [str(data)] if isinstance(data, str | Path) else [str(d) for d in data]
    run = Run.open(run)
    internal = run.evaluation
    if internal is None:  # evaluated first with the same model (it sets the threshold and temperature in the Run)
        internal = evaluate_run(run, n_resamples)
    rules = dict(run.config.data.label_rules.rename) | (label_map or {})
    data_cfg = replace(run.config.data, paths=tuple(paths), label_map=rules, format=AUTO)
    manifest = usable_data(data_cfg)
    dropped = dict(sorted(Counter(r.label for r in manifest.records if not run.label_map.knows(r.label)).items()))
    manifest = manifest.subset([r for r in manifest.records if run.label_map.knows(r.label)])
    names = " + ".join(paths)
    if not manifest.records:
        raise CovidxrError(f"{names}: none of its labels {sorted(dropped)} is a class of the run {run.spec.classes}")
    scored = score(run, manifest, manifest.records)
    external = summarise(scored, run.spec, n_resamples, run.config.data.seed)
    external.data = names
    external.classes_present = sorted({run.spec.classes[t] for t in scored.targets.tolist()})
    out_dir = Path(out) if out else run.root / EXTERNAL_DIR / "+".join(_slug(p) for p in paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_predictions(out_dir / PREDICTIONS_FILE, [("external", scored)], run)
    result = ExternalEvaluation(
        internal.test, external, run.spec.threshold,
        per_label_rates(scored, run.spec, n_resamples, run.config.data.seed), dropped, str(out_dir),
        fair=fair_of(scored, run.spec, n_resamples, run.config.data.seed),
    )  # fmt: skip
    write_json(out_dir / METRICS_FILE, result.to_json())
    return result


def fair_of(scored: Scored, spec: ModelSpec, n_resamples: int, seed: int) -> FairScore:
    """The within-source view of scored films, for the audit class (the positive class of a binary run)."""
    y, score = _audit_target(spec, scored)
    called = spec.decide(scored.scores) == spec.audit_class
    return fair_score(y, score, called, [r.source for r in scored.records], scored.groups(), n_resamples, seed)


def per_label_rates(scored: Scored, spec: ModelSpec, n_resamples: int, seed: int) -> dict[str, LabelRates]:
    """Per data-set label: predicted-class counts, the share called the audit class (the false-positive rate
    where that is not the label) with a patient-bootstrap CI, and the distribution of that class's score."""
    k = spec.audit_class
    predicted = spec.decide(scored.scores)
    called = (predicted == k).astype(float)
    groups = scored.groups()
    labels = np.array([r.label for r in scored.records])
    out = {}
    for label in sorted(set(labels.tolist())):
        rows = labels == label
        ci = patient_bootstrap(partial(_rate, called[rows]), groups[rows], n_resamples, seed)
        score = scored.scores[rows, k]
        out[label] = LabelRates(
            n_images=int(rows.sum()), called=spec.classes[k], rate_called=float(called[rows].mean()),
            rate_called_ci95=list(ci.get("rate", (float("nan"), float("nan")))),
            predicted={c: int(np.sum(predicted[rows] == j)) for j, c in enumerate(spec.classes)},
            score_quantiles={q: float(np.quantile(score, float(q))) for q in ("0.1", "0.25", "0.5", "0.75", "0.9")},
        )  # fmt: skip
    return out


def comparison_table(result: ExternalEvaluation) -> str:
    internal, external = result.internal, result.external
    mixed = result.fair is not None and result.fair.cross_source_share > 0
    lines = [
        f"{'metric':<14}{'internal test':>22}{'external':>22}{'gap':>9}",
        f"{'images':<14}{internal.n_images:>22}{external.n_images:>22}",
    ]
    for name in BINARY_METRICS:
        if name not in internal.metrics:
            continue
        a, b = internal.metrics[name], external.metrics[name]
        ext = _with_ci(b, external.ci95.get(name)) if np.isfinite(b) else "not defined"
        gap = f"{b - a:>+9.3f}" if np.isfinite(b) else ""
        label = f"{name}*" if mixed and name in ("roc_auc", "average_precision") else name
        lines.append(f"{label:<14}{_with_ci(a, internal.ci95.get(name)):>22}{ext:>22}{gap}")
    if mixed:
        lines.append("* over films of different sources: it measures the hospital as much as the finding")
    if external.classes_present and len(external.classes_present) == 1:
        lines.append(f"external set holds one class only ({external.classes_present[0]}): AUCs are not defined")
    return "\n".join(lines)


def fair_table(fair: FairScore) -> str:
    """The headline, then one row per source holding both classes, then the one-class sources."""
    lines = [f"FAIR (both classes from one source): {fair_summary(fair)}"]
    if fair.sources:
        lines.append(f"{'source':<42}{'positives':>10}{'negatives':>10}{'AUC':>8}{'sens':>8}{'spec':>8}")
        for source, a in fair.sources.items():
            lines.append(f"{short_source(source):<42}{a.n_positive:>10}{a.n_negative:>10}{a.auc:>8.3f}"
                         f"{a.sensitivity:>8.3f}{a.specificity:>8.3f}")  # fmt: skip
    for source, side in fair.one_class_sources.items():
        lines.append(f"{short_source(source)}: {side} films only (no within-source comparison)")
    return "\n".join(lines)


def per_label_table(result: ExternalEvaluation) -> str:
    rows = result.per_label
    called = next(iter(rows.values())).called if rows else ""
    lines = [f"{'external label':<20}{'images':>8}{f'called {called}':>22}{'95% CI':>16}{'median score':>14}"]
    for label, r in rows.items():
        lo, hi = r.rate_called_ci95
        lines.append(
            f"{label:<20}{r.n_images:>8}{r.rate_called:>22.1%}{f'[{lo:.0%}, {hi:.0%}]':>16}"
            f"{r.score_quantiles['0.5']:>14.3f}"
        )
    for label, n in result.dropped_labels.items():
        lines.append(f"dropped {n} image(s) labelled {label!r}: not a class of this run (map it with --label-map)")
    return "\n".join(lines)


def _with_ci(value: float, ci: list[float] | None) -> str:
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and np.isfinite(ci[0]) else f"{value:.3f}"


def _write_predictions(path: Path, parts: list[tuple[str, Scored]], run: Run) -> None:
    """Every image with its raw logits, calibrated scores (full precision: rounding turns close scores into ties
    and moves AUCs) and the run's decision (ModelSpec.decide)."""
    classes = run.spec.classes
    columns = ["split", "path", "patient_id", "label", "target", *(f"score_{c}" for c in classes),
               *(f"logit_{c}" for c in classes), "predicted"]  # fmt: skip
    rows = [
        dict(zip(columns, [name, r.path, r.patient_id or "", r.label, int(t), *map(repr, map(float, s)),
                           *map(repr, map(float, z)), pred], strict=True))
        for name, scored in parts
        for r, s, z, t, pred in zip(scored.records, scored.scores, scored.logits, scored.targets,
                                    run.spec.decide(scored.scores), strict=True)
    ]  # fmt: skip
    write_csv(path, columns, rows)


def read_predictions(run_dir: Path, split: str, manifest: Manifest, spec: ModelSpec) -> Scored:
    """One split's rows of predictions.csv back as Scored (calibrated scores; raw logits where the file has them)."""
    by_path = {r.path: r for r in manifest.records}
    with (run_dir / PREDICTIONS_FILE).open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == split]
    records = [by_path.get(r["path"]) or Record(r["path"], r["label"], r["patient_id"] or None) for r in rows]

    def matrix(prefix: str) -> np.ndarray:
        cells = [[float(r.get(f"{prefix}_{c}") or "nan") for c in spec.classes] for r in rows]
        return np.array(cells, dtype=float).reshape(-1, spec.num_outputs)

    targets = np.array([int(r["target"]) for r in rows], dtype=int)
    return Scored(records, matrix("logit"), targets, matrix("score"))


def _slug(path: Path | str) -> str:
    name = Path(path).name if Path(path).name not in ("labels.csv", "metadata.csv") else Path(path).parent.name
    return folder_name(name, "external")


def _rate(called: np.ndarray, i: np.ndarray) -> dict[str, float]:
    """The share of films called positive in one bootstrap resample."""
    return {"rate": float(called[i].mean())}
