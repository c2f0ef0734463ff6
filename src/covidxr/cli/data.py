"""`covidxr data ...` and `covidxr demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from covidxr.cli.options import load_config, with_config_options
from covidxr.config import DataConfig
from covidxr.data.formats import FORMATS
from covidxr.data.prepare import REPORT_FILE, inspect_data, prepare
from covidxr.data.synth import generate
from covidxr.rundir import RunDir

data_app = typer.Typer(help="Inspect, split and generate data sets.", no_args_is_help=True)


@data_app.command("inspect")
@with_config_options("data", skip=("paths",))
def inspect_cmd(
    paths: list[Path] = typer.Argument(..., help="data set(s): folder, CSV or a public layout; several are joined"),
    report: Path | None = typer.Option(
        None, "--report", help=f"where to write the JSON report (default ./{REPORT_FILE})"
    ),
    **options: Any,
) -> None:
    """Decode every image, print the data report and write it as JSON. Exit 0 when the data set is usable."""
    cfg = load_config(None, options | {"paths": paths}).data
    manifest, data_report = inspect_data(cfg)
    if cfg.split == "official" and not manifest.has_official_split:
        data_report.warnings.append(f"--split official: the {manifest.layout} layout ships no split of its own")
    elif manifest.has_official_split:
        data_report.split = "official available (use --split official)" if cfg.split == "patient" else "official"
    out = report or Path(REPORT_FILE)
    data_report.write_json(out)
    typer.echo(data_report.format_table())
    typer.echo(f"report written to {out}")
    raise typer.Exit(0 if data_report.ok else 1)


@data_app.command("split")
@with_config_options("data", skip=("paths",))
def split_cmd(
    paths: list[Path] = typer.Argument(..., help="data set(s) to split; several are joined"),
    out: Path = typer.Option(..., "--out", help="folder for splits.csv and data_report.json"),
    **options: Any,
) -> None:
    """Patient-level stratified train/val/test split; an existing OUT/splits.csv is reused, not redone."""
    cfg = load_config(None, options | {"paths": paths}).data
    prepared = prepare(out, cfg)
    typer.echo(prepared.report.format_table())
    typer.echo("")
    typer.echo(prepared.split.format_table(prepared.manifest, prepared.label_map))
    verb = "reused" if prepared.split_reused else "written"
    typer.echo(f"{RunDir.splits} {verb}: {RunDir(out).splits}")


@data_app.command("formats")
def formats_cmd() -> None:
    """The data-set layouts covidxr reads, how each is recognised, and where to download it."""
    for fmt in FORMATS.values():
        typer.echo(f"{fmt.name:<20}{fmt.title}")
        typer.echo(f"{'':<20}layout:  {fmt.layout}")
        if fmt.url:
            typer.echo(f"{'':<20}get it:  {fmt.url}")
        typer.echo(f"{'':<20}licence: {fmt.licence}")
        typer.echo(f"{'':<20}own split: {'yes (--split official)' if fmt.official_split else 'no'}")


@data_app.command("synth")
def synth_cmd(
    out: Path = typer.Argument(..., help="folder to write the phantom set into"),
    n: int = typer.Option(400, "--n", min=10, help="number of images"),
    seed: int = typer.Option(0, "--seed"),
    size: int = typer.Option(224, "--size", min=32, help="shortest films' height in pixels (small: large sets fast)"),
) -> None:
    """Generate synthetic chest-X-ray phantoms with lesion masks (the embedded default data set)."""
    labels = generate(out, n=n, seed=seed, size=size)
    typer.echo(f"wrote {n} phantoms and {labels}")


def run_demo(
    data: Path | None = typer.Option(None, "--data", help="real data instead of the phantoms (any layout)"),
    out: Path = typer.Option(Path("demo-out"), "--out", help="folder for the phantoms, the run and the cache"),
    n: int = typer.Option(400, "--n", min=10, help="number of phantom images"),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="maximum epochs (default: the recipe's)"),
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
    cfg = Config(DataConfig(paths=(str(data),), seed=seed), TrainConfig(epochs=epochs, cache_dir=str(out / "cache")))
    resume = RunDir(run_dir).last_ckpt.exists()
    prepared = prepare(run_dir, cfg.data)
    typer.echo(prepared.report.format_table())
    typer.echo("")
    typer.echo(prepared.split.format_table(prepared.manifest, prepared.label_map))
    typer.echo("")
    result = run(cfg, run_dir, prepared=None if resume else prepared)  # checked once; a resumed run reads its own
    if result is not None:  # None only on a helper rank of a distributed run
        typer.echo(result.summary())
