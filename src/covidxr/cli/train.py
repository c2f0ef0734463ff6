"""`covidxr train`, `run`, `evaluate` and `augment preview`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from covidxr.cli.options import ACCELERATOR, DEVICES, PRECISION, load_config, with_config_options
from covidxr.config import Config
from covidxr.device import use
from covidxr.errors import CovidxrError
from covidxr.evaluation.threshold import ThresholdMethod
from covidxr.extras import require
from covidxr.rundir import RunDir

augment_app = typer.Typer(help="Augmentation previews.", no_args_is_help=True)


@with_config_options("data", "train")
def train_cmd(
    out: Path | None = typer.Option(None, "--out", help="run directory (default runs/<backbone>-<seed>)"),
    config: Path | None = typer.Option(None, "--config", help="YAML config; flags override it"),
    resume: Path | None = typer.Option(None, "--resume", help="continue an interrupted run from its last.ckpt"),
    **options: Any,
) -> None:
    """Train a classifier into a run directory (interrupt any time; continue with --resume RUN)."""
    _execute(out, config, resume, options, full_job=False)


@with_config_options("data", "train")
def run_cmd(
    out: Path | None = typer.Option(None, "--out", help="run directory (default runs/<backbone>-<seed>)"),
    config: Path | None = typer.Option(None, "--config", help="YAML config; flags override it"),
    resume: Path | None = typer.Option(None, "--resume", help="continue an interrupted run"),
    **options: Any,
) -> None:
    """The main job: inspect, split, train, evaluate on test, audit for shortcuts, write report.html."""
    _execute(out, config, resume, options, full_job=True)


def _execute(
    out: Path | None, config: Path | None, resume: Path | None, options: dict[str, Any], full_job: bool
) -> None:
    from covidxr.pipeline import run
    from covidxr.training.distributed import is_main_process
    from covidxr.training.job import train

    if resume is not None:
        cfg, run_dir = Config.from_yaml(Path(resume) / RunDir.config), resume
    else:
        cfg = load_config(config, options)
        run_dir = out or Path("runs") / f"{cfg.train.backbone}-{cfg.data.seed}"
    if full_job:
        result = run(cfg, run_dir)
        summary = result.summary() if result is not None else None
    else:
        summary = train(cfg, run_dir, resume=resume is not None).summary()
    if is_main_process():  # a distributed run's helper ranks stay silent: rank 0 speaks for the run
        typer.echo(summary)


def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="a trained run directory"),
    data: list[Path] = typer.Option(
        [], "--data", help="external data set(s), any layout; several are scored together (within-source AUC first)"
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="patient-bootstrap resamples for the CIs"),
    threshold: ThresholdMethod = typer.Option("f1", "--threshold", help="how to choose the threshold on val"),
    out: Path | None = typer.Option(None, "--out", help="with --data: folder for the external results"),
    label_map: str | None = typer.Option(
        None, "--label-map", help="with --data: map the external set's labels, OLD=NEW,... or a YAML file"
    ),
    tta: bool | None = typer.Option(
        None, "--tta/--no-tta", help="score with test-time augmentation (small shifts and scales) from now on"
    ),
    by_source: bool = typer.Option(
        False, "--by-source", help="also retrain once per source with it held out, and score the held-out source"
    ),
    accelerator: str = ACCELERATOR,
    precision: str = PRECISION,
    devices: str = DEVICES,
) -> None:
    """Test metrics with CIs, shortcut audit and report for a run; with --data, external validation too;
    with --by-source, leave-one-source-out scores."""
    from covidxr.report.html import write_report
    from covidxr.run import Run

    if data and (tta is not None or by_source):
        raise CovidxrError("--tta and --by-source belong to the run's own evaluation: run them without --data first")
    run = Run(run_dir)  # read once for every step below (evaluation, external sets, the report)
    with use(accelerator, precision, devices):
        _evaluate(run, data, bootstrap, threshold, out, label_map, tta, by_source)
    typer.echo(f"report: {write_report(run)}")


def _evaluate(run: Any, data: list[Path], bootstrap: int, threshold: Any, out: Path | None, label_map: str | None,
              tta: bool | None, by_source: bool) -> None:  # fmt: skip
    from covidxr.data.labels import parse_label_map
    from covidxr.evaluation.job import comparison_table, evaluate_external, evaluate_run, fair_table, per_label_table

    if not data:
        if out is not None or label_map is not None:
            raise CovidxrError(
                "--out and --label-map go with --data (an external set); the run's own results stay in it"
            )
        metrics = evaluate_run(run, bootstrap, threshold, tta=tta)
        for warning in metrics.warnings:
            typer.echo(f"WARNING: {warning}")
        if by_source:
            from covidxr.evaluation.by_source import by_source_table, leave_one_source_out

            typer.echo(by_source_table(leave_one_source_out(run, threshold)))
    else:
        result = evaluate_external(run, data, bootstrap, out, parse_label_map(label_map))
        if result.fair is not None:
            typer.echo(fair_table(result.fair))
            typer.echo("")
        names = " + ".join(map(str, data))
        typer.echo(f"internal test vs external ({names}), threshold {result.threshold:.3f} from the run's val split:")
        typer.echo(comparison_table(result))
        typer.echo("")
        typer.echo(per_label_table(result))
        typer.echo(f"external results: {result.out}")


def ensemble_cmd(
    runs: list[Path] = typer.Argument(..., help="finished runs sharing input size, preprocessing and split"),
    out: Path = typer.Option(..., "--out", help="the ensemble's run directory"),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="patient-bootstrap resamples for the CIs"),
) -> None:
    """Average the runs' calibrated scores into a run that evaluate, predict, serve and export take like any."""
    from covidxr.pipeline import ensemble

    metrics = ensemble(runs, out, bootstrap)
    m = metrics.test.metrics
    typer.echo(
        f"ensemble of {len(runs)} runs: test "
        + ", ".join(f"{k} {m[k]:.3f}" for k in ("accuracy", "f1", "roc_auc") if k in m)
    )
    typer.echo(f"report: {RunDir(out).report}")


@augment_app.command("preview")
def preview_cmd(
    data: Path = typer.Argument(..., help="data set to draw sample images from"),
    preset_name: str = typer.Option("seed", "--preset", help="seed | xray"),
    out: Path = typer.Option(Path("augment-preview.png"), "--out"),
    n_images: int = typer.Option(4, "--images"),
    size: int = typer.Option(224, "--size"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """A grid of originals and augmented versions, plus the same images in HSV (the study's view)."""
    from covidxr.augment.presets import preset
    from covidxr.augment.preview import preview_grid
    from covidxr.data.sources import load_data

    grid, hsv = preview_grid(load_data([data]), preset(preset_name), out, n_images, size=size, seed=seed)
    typer.echo(f"wrote {grid} and {hsv}")


def explain_cmd(
    run_dir: Path = typer.Argument(..., help="a trained run directory"),
    images: list[Path] = typer.Argument(..., help="images or folders (searched recursively)"),
    out: Path = typer.Option(Path("explanations"), "--out"),
    mc: int = typer.Option(30, "--mc", min=1, help="MC-dropout passes"),
    accelerator: str = ACCELERATOR,
    precision: str = PRECISION,
    devices: str = DEVICES,
) -> None:
    """Feature maps per layer, Grad-CAM overlays (predicted and positive class), MC-dropout uncertainty."""
    from covidxr.explain.job import explain_images

    with use(accelerator, precision, devices):
        summary = explain_images(run_dir, images, out, mc)
    for item in summary["images"]:
        typer.echo(f"{item['path']}: {item['label']} (std {item['std']:.3f}, entropy {item['entropy']:.3f})")
    for item in summary["skipped"]:
        typer.echo(f"skipped {item['path']}: {item['problem']}")
    typer.echo(f"explanations in {out}")


def filters_cmd(run_dir: Path = typer.Argument(..., help="a trained run directory")) -> None:
    """First-layer filters (plots/filters.png), weight statistics and the dead-filter table (filters.json)."""
    from covidxr.explain.job import filters_report

    result = filters_report(run_dir)
    typer.echo(f"{'layer':<40}{'kind':>12}{'channels':>10}{'dead':>8}{'share':>8}")
    for row in result.dead:
        if row.dead:
            typer.echo(f"{row.layer:<40}{row.kind:>12}{row.channels:>10}{row.dead:>8}{row.fraction:>8.0%}")
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"written {RunDir(run_dir).filters} and {RunDir(run_dir).plots / 'filters.png'}")


def predict_cmd(
    run_dir: Path = typer.Argument(..., help="a trained (and evaluated) run directory"),
    paths: list[Path] = typer.Argument(..., help="images, DICOM files or folders (searched recursively)"),
    out: Path = typer.Option(Path(RunDir.predictions), "--out", help="predictions.csv or predictions.json"),
    engine: str = typer.Option("torch", "--engine", help="torch | onnx (INT8 if exported, else fp32) | onnx-fp32"),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    mc: int = typer.Option(0, "--mc", min=0, help="MC-dropout passes for an uncertainty column (torch engine)"),
    resume: bool = typer.Option(False, "--resume", help="keep the rows an interrupted run wrote to --out (CSV)"),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="decoding processes beside inference (default: a quarter of the cores; 0: none)"
    ),
    accelerator: str = ACCELERATOR,
    precision: str = PRECISION,
    devices: str = DEVICES,
) -> None:
    """Predict files and folders in batches, streaming to CSV/JSON; unreadable files are listed with the reason."""
    from covidxr.serve.predict import predict_to_file

    with use(accelerator, precision, devices):
        counts = predict_to_file(run_dir, paths, out, engine, batch_size, mc, resume, workers)
    kept = f"; {counts['already_written']} row(s) kept from before" if counts["already_written"] else ""
    typer.echo(
        f"predicted {counts['predicted']} image(s), skipped {counts['skipped']} unreadable{kept}; written to {out}"
    )


def export_cmd(
    run_dir: Path = typer.Argument(..., help="a trained run directory"),
    fmt: str = typer.Option("onnx", "--format", help="onnx | torchscript"),
    quantize: str | None = typer.Option(
        None, "--quantize", help="int8: static INT8 (ONNX), calibrated on val, kept if test AUC and labels hold"
    ),
    accelerator: str = ACCELERATOR,
    precision: str = PRECISION,
    devices: str = DEVICES,
) -> None:
    """Export backbone + head (normalised batch in, logits out), checked against PyTorch on real images."""
    from covidxr.serve.export import export_run

    with use(accelerator, precision, devices):  # the parity check's PyTorch side
        result = export_run(run_dir, fmt, quantize)
    typer.echo(
        f"{result['path']}: max |diff| vs PyTorch on {result['images']} real images = {result['max_abs_diff']:.2e}"
    )
    if "int8" in result:
        q = result["int8"]
        typer.echo(
            f"{q['path']}: test AUC {q['int8_auc']:.4f} vs fp32 {q['fp32_auc']:.4f}, labels agree on "
            f"{q['agreement']:.1%} of {q['test_images']} test images; `--engine onnx` uses it"
        )


def serve_cmd(
    run_dir: Path = typer.Argument(..., help="a trained (and evaluated) run directory"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    engine: str = typer.Option("torch", "--engine", help="torch | onnx (INT8 if exported, else fp32) | onnx-fp32"),
    workers: int = typer.Option(4, "--workers", min=1, help="inference threads"),
    queue: int = typer.Option(16, "--queue", min=0, help="requests waiting beyond busy workers before 503"),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="seconds a prediction may take"),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="COVIDXR_API_KEY", help="require Authorization: Bearer KEY (health stays open)"
    ),
    cors_origin: list[str] = typer.Option([], "--cors-origin", help="allow browser calls from this origin (repeat)"),
    accelerator: str = ACCELERATOR,
    precision: str = PRECISION,
    devices: str = DEVICES,
) -> None:
    """Web service and upload page for a run (research use only)."""
    require("serve")
    import uvicorn

    from covidxr.serve.app import Limits, create_app

    limits = Limits(queue=queue, timeout_s=timeout)
    with use(accelerator, precision, devices):  # the service's inference threads see it
        app = create_app(run_dir, engine, limits, workers, api_key=api_key, cors_origins=tuple(cors_origin))
        typer.echo(f"serving {run_dir} on http://{host}:{port} (research tool, not a diagnostic device)")
        uvicorn.run(app, host=host, port=port, log_level="warning")
