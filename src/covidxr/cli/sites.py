"""`covidxr adapt`: a finished run adapted to a new hospital, and how many of its films it must label."""

from __future__ import annotations

from pathlib import Path

import typer

from covidxr.cli.options import ACCELERATOR, DEVICES, PRECISION
from covidxr.device import use
from covidxr.errors import CovidxrError


def adapt_cmd(
    run_dir: Path = typer.Argument(..., help="a finished --freeze head run"),
    data: list[Path] = typer.Option(..., "--data", help="the site's films, any layout (labelled for --mode head)"),
    out: Path = typer.Option(..., "--out", help="the adapted run's directory (new; the base run is not changed)"),
    mode: str = typer.Option("head", "--mode", help="head: retrain the head on labelled films | recentre: no labels"),
    base_ratio: float = typer.Option(1.0, "--base-ratio", min=0.0, help="base training films per site film mixed in"),
    curve: bool = typer.Option(False, "--curve", help="also the learning curve: site AUC against labelled films"),
    ks: str = typer.Option("0,10,20,50,100", "--ks", help="with --curve: labelled films per point"),
    draws: int = typer.Option(5, "--draws", min=1, help="with --curve: draws of labelled films per point"),
    target_auc: float | None = typer.Option(None, "--target-auc", help="with --curve: the AUC the site needs"),
    seed: int = typer.Option(0, "--seed"),
    accelerator: str = ACCELERATOR,
    precision: str = PRECISION,
    devices: str = DEVICES,
) -> None:
    """Adapt a run to a site's films: retrain its head on labelled site films (or re-centre features without
    labels) into a new run; with --curve, within-site AUC against the number of labelled films."""
    from covidxr.atomic import write_json
    from covidxr.run import Run
    from covidxr.rundir import RunDir
    from covidxr.sites.adapt import site_data
    from covidxr.sites.curve import curve_table, learning_curve, plot_curve
    from covidxr.sites.job import adapt_run

    try:
        points = tuple(int(k) for k in ks.split(","))
    except ValueError:
        raise CovidxrError(f"--ks {ks!r}: a comma list of whole numbers, e.g. 0,10,20,50") from None
    run = Run(run_dir)
    with use(accelerator, precision, devices):
        site = site_data(run, [str(p) for p in data])
        record = adapt_run(run, site, out, mode, base_ratio, seed)
        typer.echo(f"adapted {run.root} to {site.name} ({record.mode}, {record.films} films of {record.patients} "
                   f"patients) into {out}")  # fmt: skip
        for when, score in (("before", record.before), ("after", record.after)):
            if score is not None:
                lo, hi = score.auc_ci95
                typer.echo(
                    f"  {when}: within-site AUC {score.auc:.3f} [{lo:.2f}, {hi:.2f}], sensitivity "
                    f"{score.sensitivity:.2f}, specificity {score.specificity:.2f}, {score.films} films"
                )
        if record.note:
            typer.echo(f"  note: {record.note}")
        if curve:
            result = learning_curve(run, site, points, draws, seed, base_ratio, target_auc)
            write_json(RunDir(out).site_curve, result.to_json())
            plot_curve(result, RunDir(out).plots / "site_curve.png")
            typer.echo(curve_table(result))
