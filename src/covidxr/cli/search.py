"""`covidxr search` and `covidxr compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from covidxr.cli.options import load_config, with_config_options
from covidxr.rundir import RunDir


@with_config_options("data", "train")
def search_cmd(
    grid: Path = typer.Option(
        ..., "--grid", help="YAML: training field -> list of values (see grids/), or {low, high, log} for tpe/random"
    ),
    sampler: str = typer.Option("grid", "--sampler", help="grid (every point, the study's) | tpe | random"),
    trials: int | None = typer.Option(None, "--trials", min=1, help="trials to draw (tpe, random)"),
    out: Path = typer.Option(Path("runs/search"), "--out", help="search folder: trials, leaderboard, search.db"),
    storage: str | None = typer.Option(None, "--storage", help="SQLAlchemy URL shared by workers on many machines"),
    study: str | None = typer.Option(None, "--study", help="study name in the storage"),
    workers: int = typer.Option(1, "--workers", min=1, help="local worker processes"),
    config: Path | None = typer.Option(None, "--config", help="YAML config for everything the grid leaves fixed"),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="patient-bootstrap resamples for test CIs"),
    one_at_a_time: bool = typer.Option(
        False, "--one-at-a-time", help="a run per point even where the points' heads could train together"
    ),
    **options: Any,
) -> None:
    """Search chosen on validation F1, the winner evaluated once on test; resumable (run it again)."""
    from covidxr.search.grid import grid_points, load_grid
    from covidxr.search.job import search
    from covidxr.search.leaderboard import format_table

    the_grid = load_grid(grid)
    cfg = load_config(config, options)
    if sampler == "grid":
        typer.echo(f"grid: {len(grid_points(the_grid))} points over {', '.join(the_grid)}")
    else:
        typer.echo(f"{sampler}: {trials} trials over {', '.join(the_grid)}, pruned on validation loss")
    result = search(cfg, the_grid, out, storage, study, workers, bootstrap, sampler, trials, not one_at_a_time)
    typer.echo(format_table(result.rows, top=10))
    test = result.metrics.test.metrics
    typer.echo(f"winner: {result.winner} (test F1 {test['f1']:.3f}, AUC {test['roc_auc']:.3f})")
    typer.echo(f"leaderboard: {RunDir(result.out).leaderboard}")
    typer.echo(f"report: {result.report}")


def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="finished run directories"),
    out: Path | None = typer.Option(None, "--out", help="also write the table as CSV"),
) -> None:
    """The leaderboard table (settings and validation metrics) for finished runs."""
    from covidxr.errors import CovidxrError
    from covidxr.search.leaderboard import format_table, run_row, sort_rows, write_leaderboard

    missing = [str(r) for r in runs if not (r / RunDir.state).is_file()]
    if missing:
        raise CovidxrError(f"not finished covidxr runs: {', '.join(missing)}")
    rows = sort_rows([run_row(r) for r in runs])
    typer.echo(format_table(rows))
    if out:
        typer.echo(f"written to {write_leaderboard(rows, out)}")
