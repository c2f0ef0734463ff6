"""`covidxr` command line: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import sys

import typer

from covidxr.cli.cache import cache_app
from covidxr.cli.data import data_app, run_demo
from covidxr.cli.lungs import lungs_app
from covidxr.cli.search import compare_cmd, search_cmd
from covidxr.cli.sites import adapt_cmd
from covidxr.cli.train import (
    augment_app,
    ensemble_cmd,
    evaluate_cmd,
    explain_cmd,
    export_cmd,
    filters_cmd,
    predict_cmd,
    run_cmd,
    serve_cmd,
    train_cmd,
)
from covidxr.cli.weights import weights_app
from covidxr.errors import CovidxrError
from covidxr.threads import apply as apply_threads

app = typer.Typer(
    help="Chest X-ray COVID-19 classifier by transfer learning, evaluated honestly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _process(
    threads: int | None = typer.Option(
        None, "--threads", min=1, envvar="COVIDXR_THREADS",
        help="CPU threads for this process (default: the cores its affinity and cgroup quota allow)",
    ),
) -> None:  # fmt: skip
    """Chest X-ray COVID-19 classifier by transfer learning, evaluated honestly."""
    apply_threads(threads)


app.command("explain", help="Feature maps, Grad-CAM overlays and MC-dropout uncertainty for images.")(explain_cmd)
app.command("filters", help="Learned first-layer filters, weight statistics and dead filters of a run.")(filters_cmd)
app.command("predict", help="Predict images, DICOM and folders to CSV/JSON (streaming; torch or onnx).")(predict_cmd)
app.command("export", help="Export a run to ONNX or TorchScript with a parity check on real images.")(export_cmd)
app.command("serve", help="Web service with an upload page for a run (research use only).")(serve_cmd)
app.command("search", help="Grid search (Optuna), chosen on val F1, winner tested once; resumable.")(search_cmd)
app.command("compare", help="Leaderboard table of finished runs.")(compare_cmd)
app.add_typer(data_app, name="data")
app.add_typer(lungs_app, name="lungs")
app.add_typer(augment_app, name="augment")
app.add_typer(weights_app, name="weights")
app.add_typer(cache_app, name="cache")
app.command("run", help="The main job: inspect, split, train, evaluate, audit, report.")(run_cmd)
app.command("train", help="Train a classifier into a run directory; resumable.")(train_cmd)
app.command("evaluate", help="Test metrics with CIs, shortcut audit, report; --data for external validation.")(
    evaluate_cmd
)
app.command("adapt", help="Adapt a run to a new hospital's films; --curve: how many it must label.")(adapt_cmd)
app.command("ensemble", help="Average several runs' calibrated scores into one run directory.")(ensemble_cmd)
app.command("demo", help="Run the main job on freshly generated synthetic phantoms (no download).")(run_demo)


def main() -> None:
    """Entry point: user-facing errors become one line on stderr and exit code 2, never a traceback."""
    try:
        app()
    except CovidxrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
