"""The report's figures as PNG files in the run's plots/ folder, drawn from the run's files (history, metrics,
predictions), so that evaluation computes and the report draws (matplotlib's Figure API: no global state)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

from covidxr.data.manifest import Manifest
from covidxr.data.readers import read_image
from covidxr.engine.history import read_history
from covidxr.models.spec import ModelSpec
from covidxr.report.inputs import RunFiles
from covidxr.results import Reliability

if TYPE_CHECKING:
    from covidxr.evaluation.job import Scored


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def training_curves(files: RunFiles, out: Path) -> list[Path]:
    """Loss and accuracy per epoch, train and val, with the best epoch and the early-stopping point marked."""
    rows = read_history(files.run.history)
    if not rows:
        return []
    state = files.state
    epochs = [int(r["epoch"]) for r in rows]
    max_epochs = files.config.train.epochs if files.config else None
    paths = []
    for metric, title in (("loss", "Loss"), ("acc", "Accuracy")):
        fig = Figure(figsize=(5.5, 3.6))
        ax = fig.subplots()
        for split, style in (("train", "-o"), ("val", "-s")):
            ax.plot(epochs, [float(r[f"{split}_{metric}"]) for r in rows], style, ms=3, label=split)
        best = state.best_epoch if state is not None and state.finished else None
        if best is not None:
            ax.axvline(best, color="green", ls="--", lw=1, label=f"best epoch ({best})")
        if max_epochs and len(epochs) < max_epochs:
            ax.axvline(epochs[-1], color="red", ls=":", lw=1, label=f"early stop ({epochs[-1]})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{title} vs epochs")
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / f"{title.lower()}.png"))
    return paths


def roc_pr(y: np.ndarray, score: np.ndarray, auc: float, pr_auc: float, out: Path) -> list[Path]:
    fpr, tpr, _ = roc_curve(y, score)
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    ax.plot(fpr, tpr, lw=2, label=f"model (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="chance")
    ax.set(
        xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)", title="ROC (test)"
    )
    ax.legend(loc="lower right", fontsize=8)
    roc_path = _save(fig, out / "roc.png")
    precision, recall, _ = precision_recall_curve(y, score)
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    ax.plot(recall, precision, lw=2, label=f"model (AP {pr_auc:.3f})")
    ax.axhline(float(np.mean(y)), color="k", ls="--", lw=1, label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall (test)", ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    return [roc_path, _save(fig, out / "pr.png")]


def confusion_plot(matrix: list[list[int]], classes: list[str], out: Path) -> Path:
    m = np.asarray(matrix)
    fig = Figure(figsize=(3.8 + 0.4 * len(classes), 3.4 + 0.3 * len(classes)))
    ax = fig.subplots()
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=20, fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test)")
    return _save(fig, out / "confusion.png")


def reliability_plot(curves: dict[str, Reliability], out: Path) -> Path:
    """One reliability curve per named set of bins (before and after temperature scaling)."""
    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    for name, calibration in curves.items():
        mean = np.array(calibration.mean_score, dtype=float)
        observed = np.array(calibration.observed, dtype=float)
        ok = ~np.isnan(mean)
        ax.plot(mean[ok], observed[ok], "-o", label=f"{name} (ECE {calibration.ece:.3f})")
    ax.set(xlabel="mean predicted probability", ylabel="observed positive rate", title="Reliability (test)")
    ax.legend(fontsize=8)
    return _save(fig, out / "reliability.png")


def referral_plot(curve: list[tuple[float, float]], out: Path) -> Path:
    """Accuracy on the images kept as the most uncertain (MC dropout) are referred to a radiologist."""
    fig = Figure(figsize=(4.2, 3.4))
    ax = fig.subplots()
    ax.plot([c[0] for c in curve], [c[1] for c in curve], "-o")
    ax.set(xlabel="fraction referred (most uncertain first)", ylabel="accuracy on the rest", title="Referral curve")
    return _save(fig, out / "referral.png")


def mistakes_gallery(scored: Scored, manifest: Manifest, spec: ModelSpec, out: Path, n: int = 8) -> Path | None:
    """The most confident wrong test predictions: where to look first when auditing a model."""
    classes, pred = spec.classes, spec.decide(scored.scores)
    binary = spec.task == "binary"
    confidence = np.abs(scored.positive - spec.threshold) if binary else scored.scores.max(axis=1)
    wrong = np.flatnonzero(pred != scored.targets)
    fig = Figure(figsize=(2.2 * max(1, min(n, len(wrong))), 2.6))
    if len(wrong) == 0:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no mistakes on the test split", ha="center", va="center")
        ax.axis("off")
        return _save(fig, out / "mistakes.png")
    chosen = wrong[np.argsort(-confidence[wrong])][:n]
    axes = np.atleast_1d(fig.subplots(1, len(chosen)))
    for ax, i in zip(axes, chosen, strict=True):
        pixels = read_image(manifest.abspath(scored.records[i])).pixels
        ax.imshow(pixels, cmap="gray")
        ax.set_title(
            f"true {classes[scored.targets[i]]}\npred {classes[pred[i]]} ({scored.scores[i].max():.2f})", fontsize=7
        )
        ax.axis("off")
    return _save(fig, out / "mistakes.png")


def occlusion_example(scored: Scored, manifest: Manifest, spec: ModelSpec, out: Path) -> Path | None:
    """One test image as the model saw it, and with its lungs hidden (what the occlusion test scores)."""
    from covidxr.lungs.as_seen import hide, record_lungs

    if not scored.records:
        return None
    record = scored.records[0]
    pixels = read_image(manifest.abspath(record)).pixels
    unit = spec.preprocess.to_unit_rgb(pixels)
    lungs, _ = record_lungs(spec.preprocess, manifest.root, record, pixels)
    fig = Figure(figsize=(5, 2.7))
    axes = fig.subplots(1, 2)
    for ax, image, title in ((axes[0], unit, "as seen"), (axes[1], hide(unit, lungs), "lungs hidden")):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    return _save(fig, out / "occlusion.png")


def run_plots(files: RunFiles) -> Path:
    """Every figure of the report drawn from the run's files: the training curves of any trained run, the
    referral curve once explained, and the evaluation's figures once metrics.json and predictions.csv exist.
    Returns the plots folder."""
    from covidxr.augment.presets import preset
    from covidxr.augment.preview import preview_grid
    from covidxr.evaluation.job import read_predictions

    run = files.run
    out = run.plots
    out.mkdir(exist_ok=True)
    if run.history.is_file():
        training_curves(files, out)
    if files.explanation is not None:
        referral_plot(files.explanation.referral, out)
    evaluation, spec, cfg = files.evaluation, files.spec, files.config
    if evaluation is None or spec is None or cfg is None or not run.predictions.is_file():
        return out
    manifest = files.manifest
    test, metrics = read_predictions(run.root, "test", manifest, spec), evaluation.test.metrics
    if spec.task == "binary":
        roc_pr(test.targets, test.positive, metrics["roc_auc"], metrics["pr_auc"], out)
    calibration = evaluation.calibration
    reliability_plot({"uncalibrated": calibration.test_before, "calibrated": calibration.test_after}, out)
    confusion_plot(evaluation.test.confusion, spec.classes, out)
    mistakes_gallery(test, manifest, spec, out)
    occlusion_example(test, manifest, spec, out)
    preview_grid(
        manifest,
        preset(cfg.train.augment, cfg.train.augment_ops),
        out / "augment.png",
        n_images=3,
        n_versions=4,
        size=160,
    )
    return out
