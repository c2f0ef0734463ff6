"""Typed results: what one stage writes into the run directory as JSON and later stages read back.

Each class is a dataclass whose fields are the file's keys; `to_json` writes them (nested results, lists and
dicts of them included) and `from_json` reads them back through pydantic, which checks every value's type. A
field left `None` is not written, so optional parts (the threshold of a multiclass run, the audit of an
unaudited one) are absent from the file, as a reader of the JSON expects.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import TypeAdapter

R = TypeVar("R", bound="JsonRecord")


class JsonRecord:
    def to_json(self) -> dict[str, Any]:
        return _encode(self)

    @classmethod
    def from_json(cls: type[R], raw: dict[str, Any]) -> R:
        """The record in `raw`, validated by pydantic against the dataclass's types (Literal values included,
        nested records, lists and dicts of them); keys a later version added are ignored, not fatal."""
        if cls not in _ADAPTERS:
            _ADAPTERS[cls] = TypeAdapter(cls)
        adapter: TypeAdapter[R] = _ADAPTERS[cls]
        return adapter.validate_python(raw)


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}  # one per record type: building one costs milliseconds


def _encode(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(v) for f in fields(value) if (v := getattr(value, f.name)) is not None}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


# --- training ---------------------------------------------------------------------------------------------


@dataclass
class TrainState(JsonRecord):
    """state.json: whether training finished, and what it found (an ensemble trains nothing: `ensemble` members)."""

    status: Literal["running", "finished"]
    best_epoch: int = -1
    best_val_loss: float = float("nan")
    epochs_run: int = 0
    cache_hit: bool | None = None  # None: the feature cache was not used
    cache_key: str | None = None
    head: str | None = None  # "linear probe, C = ..." when the probe is the model
    ensemble: int | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"


# --- evaluation -------------------------------------------------------------------------------------------


@dataclass
class Reliability(JsonRecord):
    """Reliability-diagram bins of one score: equal-width bins over [0, 1], and the expected calibration error."""

    ece: float
    edges: list[float]
    mean_score: list[float]
    observed: list[float]
    counts: list[int]


@dataclass
class SplitMetrics(JsonRecord):
    """One split's metrics at the run's decision rule, with patient-bootstrap 95% CIs (none on val)."""

    n_images: int
    n_patients: int
    metrics: dict[str, float]
    ci95: dict[str, list[float]]
    confusion: list[list[int]]
    per_class: dict[str, dict[str, float]] | None = None  # multiclass: one-vs-rest rows
    calibration: Reliability | None = None  # binary: of the positive score
    data: str | None = None  # external sets: where the images came from
    classes_present: list[str] | None = None  # external sets: which of the run's classes they hold


@dataclass(frozen=True)
class RunCalibration(JsonRecord):
    """calibration.json: how the run's logits become scores and decisions, fitted on the val split by one step
    (evaluation.calibration.calibrate) and read by every stage through ModelSpec: logits divided by the
    temperature, the binary threshold on the positive score, test-time augmentation on or off. A run not yet
    calibrated decides with the identity (T 1, threshold 0.5)."""

    temperature: float = 1.0
    threshold: float = 0.5
    threshold_method: str | None = None
    tta: bool = False
    fitted_on: str | None = None  # "val" once fitted


@dataclass
class Calibration(JsonRecord):
    method: str
    temperature: float
    fitted_on: str
    test_before: Reliability
    test_after: Reliability


@dataclass
class Threshold(JsonRecord):
    value: float
    method: str
    chosen_on: str


@dataclass
class AtSpecificity(JsonRecord):
    """The validation threshold for a target specificity, and what it gives on test."""

    threshold: float
    chosen_on: str
    test_sensitivity: float
    test_specificity: float


@dataclass
class AucCI(JsonRecord):
    auc: float
    ci: list[float]


@dataclass
class Baseline(JsonRecord):
    """A random forest on image facts (no pixels of the lungs): how far labels are predictable without disease."""

    auc: float
    ci: list[float]
    top_features: list[tuple[str, float]]
    warning: bool


@dataclass
class Occlusion(JsonRecord):
    """Test AUC with the image as is and with both lung fields hidden."""

    auc_full: float
    auc_full_ci: list[float]
    auc_occluded: float
    auc_occluded_ci: list[float]
    ellipse: dict[str, float]  # the fallback for films whose lungs are not known
    warning: bool
    lungs_from: dict[str, int] | None = None  # where each hidden film's lungs came from (lungs.as_seen): counts


@dataclass
class Audit(JsonRecord):
    metadata_baseline: Baseline
    input_baseline: Baseline
    lung_occlusion: Occlusion
    label_by_source: dict[str, dict[str, int]]
    warnings: list[str]
    sample: dict[str, int] | None = None  # films audited of each split: train, train_of, test, test_of


@dataclass
class SourceRates(JsonRecord):
    """One source's test images: the share called the audit class per label, and the AUC within the source."""

    n_images: int
    called: str
    rate_called: dict[str, float]
    auc: float | None = None  # None: the source holds one side only


@dataclass
class Evaluation(JsonRecord):
    """metrics.json: the run scored on its own val and test splits, calibrated, thresholded and audited."""

    task: str
    classes: list[str]
    tta: bool
    calibration: Calibration
    val: SplitMetrics
    test: SplitMetrics
    test_by_source: dict[str, SourceRates]
    threshold: Threshold | None = None  # binary runs
    sensitivity_at_95_specificity: AtSpecificity | None = None  # binary runs
    audit: Audit | None = None
    test_fair: FairScore | None = None  # the test split's within-source view (older results lack it)

    @property
    def warnings(self) -> list[str]:
        return self.audit.warnings if self.audit else []


@dataclass
class LabelRates(JsonRecord):
    """One label of an external set: predicted-class counts and the share called the audit class (with CI)."""

    n_images: int
    called: str
    rate_called: float
    rate_called_ci95: list[float]
    predicted: dict[str, int]
    score_quantiles: dict[str, float]


@dataclass
class SourceAuc(JsonRecord):
    """One source holding both classes: its AUC and rates at the run's threshold."""

    n_positive: int
    n_negative: int
    auc: float
    sensitivity: float
    specificity: float


@dataclass
class FairScore(JsonRecord):
    """Scores that hospitals cannot fool (evaluation.fair): pairs of films from one source only."""

    verdict: str  # "within-source", or why the set cannot measure the finding
    sources: dict[str, SourceAuc]  # the sources holding both classes
    one_class_sources: dict[str, str]  # source -> "positive" | "negative"
    cross_source_share: float  # share of the mixed AUC's pairs drawn from two sources
    within_source_auc: float | None = None  # the headline (None: no source holds both classes)
    within_source_ci95: list[float] | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    mixed_auc: float | None = None  # over every pair: shown, never the headline


@dataclass
class ExternalEvaluation(JsonRecord):
    """external/<name>/metrics.json: an outside data set scored with the run's threshold, beside its test split."""

    internal: SplitMetrics
    external: SplitMetrics
    threshold: float
    per_label: dict[str, LabelRates]
    dropped_labels: dict[str, int]
    out: str = ""  # the folder holding this result and its predictions
    fair: FairScore | None = None  # the headline: within-source AUC (older results lack it)


# --- explanations -----------------------------------------------------------------------------------------


@dataclass
class Localisation(JsonRecord):
    """Grad-CAM against lesion masks, over the true positives that carry one."""

    true_positives: int
    pointing_game: float
    energy_inside_mask: float
    chance: float
    mask_area: float


@dataclass
class DeadFilters(JsonRecord):
    layer: str
    kind: Literal["activation", "weights"]
    channels: int
    dead: int
    fraction: float


@dataclass
class WeightStats(JsonRecord):
    layer: str
    shape: list[int]
    mean: float
    std: float
    abs_max: float


@dataclass
class Filters(JsonRecord):
    """filters.json: first-layer kernel shape, per-layer weight statistics and dead filters."""

    first_layer: list[int]
    weights: list[WeightStats]
    dead: list[DeadFilters]
    notes: list[str]


@dataclass
class Explanation(JsonRecord):
    """explain.json: the run-level explanations behind the report's Explanations section."""

    mc_passes: int
    cam_energy_outside_lungs: float
    referral: list[tuple[float, float]]  # (fraction referred, accuracy on the rest)
    uncertainty_wrong_vs_right: list[float | None]
    filters: Filters
    localisation: Localisation | None = None
    cam_in_lungs: dict[str, list[float]] | None = None  # predicted class -> [mean share inside, CI low, CI high, n]
    lung_area: float | None = None  # mean share of the input the lungs cover: an evenly spread CAM's share inside
    lungs_from: dict[str, int] | None = None  # where the films' lungs came from (lungs.as_seen): counts
    cam: str | None = None  # the CAM method and layer (explain.gradcam.cam_name)
    sample: list[int] | None = None  # [films explained, test films]: a bounded sample, spread over the split


# --- search -----------------------------------------------------------------------------------------------

SETTINGS = ("backbone", "weights", "lr", "batch_size", "optimizer", "dropout", "freeze", "epochs", "augment")
VAL_METRICS = ("val_f1", "val_precision", "val_recall", "val_auc", "val_acc", "val_loss")


@dataclass
class SegmentedFilm(JsonRecord):
    path: str
    dice: float
    area: float  # share of the film the cleaned predicted mask covers
    flagged: str | None = None  # why the predicted mask was judged implausible (the film falls back to itself)


@dataclass
class SegmentationEvaluation(JsonRecord):
    """lungs_metrics.json: a lung model's Dice (after post-processing) on films whose masks it never trained on."""

    data: str
    n_images: int
    n_patients: int
    mean_dice: float
    dice_ci95: list[float]  # patient bootstrap
    median_dice: float
    flagged: int
    films_per_second: float
    films: list[SegmentedFilm]


@dataclass
class LeaderboardRow:
    """One finished trial or run in leaderboard.csv: its settings and validation metrics at its best epoch."""

    run: str
    settings: dict[str, Any]
    metrics: dict[str, float]
    best_epoch: int
    epochs_run: int
    train_seconds: float
    params: dict[str, Any] = field(default_factory=dict)  # the trial number and sampled values, in a search

    def value(self, name: str) -> Any:
        """A setting, sampled parameter or validation metric by name (a search's grid names any of them)."""
        return self.params.get(name, self.settings.get(name, self.metrics.get(name)))

    def sort_key(self) -> tuple[float, float, float]:
        """Val F1, ties broken by val AUC, then by lower val loss (shortcut-ridden data ties at F1 = AUC = 1)."""
        m = self.metrics
        return -m.get("val_f1", 0.0), -m.get("val_auc", 0.0), m.get("val_loss", 0.0)

    def to_csv(self) -> dict[str, Any]:
        row: dict[str, Any] = {"run": self.run, **self.settings, **self.metrics}
        return row | {"best_epoch": self.best_epoch, "epochs_run": self.epochs_run,
                      "train_seconds": self.train_seconds, **self.params}  # fmt: skip

    @classmethod
    def read_all(cls, path: Path) -> list[LeaderboardRow]:
        with path.open(newline="") as fh:
            return [cls.from_csv(r) for r in csv.DictReader(fh)]

    @classmethod
    def from_csv(cls, row: dict[str, str]) -> LeaderboardRow:
        fixed = {"run", "best_epoch", "epochs_run", "train_seconds", *SETTINGS, *VAL_METRICS}
        return cls(
            run=row["run"],
            settings={k: _cell(row[k]) for k in SETTINGS if k in row},
            metrics={k: float(row[k]) for k in VAL_METRICS if row.get(k, "") != ""},
            best_epoch=int(row["best_epoch"]),
            epochs_run=int(row["epochs_run"]),
            train_seconds=float(row["train_seconds"]),
            params={k: _cell(v) for k, v in row.items() if k not in fixed},
        )


def _cell(text: str) -> Any:
    """A CSV cell back as the number it was written from, None where empty, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text or None
