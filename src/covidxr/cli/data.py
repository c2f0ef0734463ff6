"""`covidxr data ...` and `covidxr demo`."""

from __future__ import annotations

from pathlib import Path

import typer

from covidxr.config import DataConfig
from covidxr.data.labels import Task
from covidxr.data.prepare import REPORT_FILE, inspect_path, prepare
from covidxr.data.readers import DEFAULT_MAX_PIXELS
from covidxr.data.synth import generate

data_app = typer.Typer(help="Inspect, split and generate data sets.", no_args_is_help=True)

TaskOpt = typer.Option("binary", "--task", help="binary (COVID-19 vs rest, as the study) or multiclass")
PositiveOpt = typer.Option("COVID-19", "--positive", help="label of the positive class for the binary task")
MaxPixelsOpt = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="refuse images with more pixels (bomb guard)")


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected three numbers like 0.7,0.15,0.15, got {text!r}") from None
    if len(parts) != 3:
        raise typer.BadParameter(f"expected three numbers like 0.7,0.15,0.15, got {text!r}")
    return parts  # type: ignore[return-value]


@data_app.command("inspect")
def inspect_cmd(
    path: Path = typer.Argument(..., help="folder-per-class root, CSV manifest, or Cohen metadata.csv"),
    task: Task = TaskOpt,
    positive: str = PositiveOpt,
    max_pixels: int = MaxPixelsOpt,
    report: Path | None = typer.Option(
        None, "--report", help=f"where to write the JSON report (default ./{REPORT_FILE})"
    ),
) -> None:
    """Decode every image, print the data report and write it as JSON. Exit 0 when the data set is usable."""
    cfg = DataConfig(task=task, positive=positive, max_pixels=max_pixels)
    _, data_report = inspect_path(path, cfg)
    out = report or Path(REPORT_FILE)
    data_report.write_json(out)
    typer.echo(data_report.format_table())
    typer.echo(f"report written to {out}")
    raise typer.Exit(0 if data_report.ok else 1)


@data_app.command("split")
def split_cmd(
    path: Path = typer.Argument(..., help="data set to split"),
    out: Path = typer.Option(..., "--out", help="folder for splits.csv and data_report.json"),
    task: Task = TaskOpt,
    positive: str = PositiveOpt,
    seed: int = typer.Option(0, "--seed"),
    fractions: str = typer.Option("0.7,0.15,0.15", "--fractions", help="train,val,test"),
    max_pixels: int = MaxPixelsOpt,
) -> None:
    """Patient-level stratified train/val/test split; an existing OUT/splits.csv is reused, not redone."""
    cfg = DataConfig(
        task=task, positive=positive, seed=seed, split_fractions=_fractions(fractions), max_pixels=max_pixels
    )
    prepared = prepare(path, out, cfg)
    typer.echo(prepared.report.format_table())
    typer.echo("")
    typer.echo(prepared.split.format_table(prepared.manifest, prepared.label_map))
    verb = "reused" if prepared.split_reused else "written"
    typer.echo(f"splits.csv {verb}: {out / 'splits.csv'}")


@data_app.command("synth")
def synth_cmd(
    out: Path = typer.Argument(..., help="folder to write the phantom set into"),
    n: int = typer.Option(400, "--n", min=10, help="number of images"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate synthetic chest-X-ray phantoms with lesion masks (the embedded default data set)."""
    labels = generate(out, n=n, seed=seed)
    typer.echo(f"wrote {n} phantoms and {labels}")


def run_demo(
    data: Path | None = typer.Option(None, "--data", help="real data instead of the phantoms (any layout)"),
    out: Path = typer.Option(Path("demo-out"), "--out", help="folder for the phantoms, the run and the cache"),
    n: int = typer.Option(400, "--n", min=10, help="number of phantom images"),
    epochs: int = typer.Option(20, "--epochs", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """`covidxr run` with the defaults on freshly generated phantoms (or on --data), ending with the report."""
    from covidxr.config import Config, TrainConfig
    from covidxr.pipeline import run

    if data is None:
        data = out / "phantoms"
        if not (data / "labels.csv").exists():
            generate(data, n=n, seed=seed)
            typer.echo(f"generated {n} phantoms in {data}")
        run_dir = out / "run"
    else:
        run_dir = out / f"run-{Path(data).resolve().name}"
    cfg = Config(DataConfig(path=str(data), seed=seed), TrainConfig(epochs=epochs, cache_dir=str(out / "cache")))
    prepared = prepare(data, run_dir, cfg.data)
    typer.echo(prepared.report.format_table())
    typer.echo("")
    typer.echo(prepared.split.format_table(prepared.manifest, prepared.label_map))
    typer.echo("")
    typer.echo(run(cfg, run_dir).summary())
