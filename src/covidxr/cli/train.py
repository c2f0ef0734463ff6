"""`covidxr train`, `run`, `evaluate` and `augment preview`."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer

from covidxr.config import Config, TrainConfig
from covidxr.errors import CovidxrError

augment_app = typer.Typer(help="Augmentation previews.", no_args_is_help=True)


def load_config(config: Path | None, data: Path | None, overrides: dict[str, Any]) -> Config:
    """Config file (or defaults), then every flag the user actually gave."""
    cfg = Config.from_yaml(config) if config else Config()
    if data is not None:
        cfg.data.path = str(data)
    known = {f.name for f in fields(TrainConfig)}
    for name, value in overrides.items():
        if value is not None:
            if name == "seed":
                cfg.data.seed = value
            elif name in known:
                setattr(cfg.train, name, value)
            else:
                raise CovidxrError(f"internal: flag {name} maps to no config field")
    return cfg


def train_cmd(
    data: Path | None = typer.Option(None, "--data", help="data set: folder, CSV manifest or Cohen metadata.csv"),
    out: Path | None = typer.Option(None, "--out", help="run directory (default runs/<backbone>-<seed>)"),
    config: Path | None = typer.Option(None, "--config", help="YAML config; flags override it"),
    resume: Path | None = typer.Option(None, "--resume", help="continue an interrupted run from its last.ckpt"),
    backbone: str | None = typer.Option(None, "--backbone", help="registry name, e.g. resnet50, simple_cnn"),
    weights: str | None = typer.Option(None, "--weights", help="imagenet | none | PATH (.safetensors/state dict)"),
    freeze: str | None = typer.Option(None, "--freeze", help="head | last-k | full"),
    last_k: int | None = typer.Option(None, "--last-k", help="stages trained with --freeze last-k"),
    input_size: int | None = typer.Option(None, "--input-size", help="override the backbone's input size"),
    epochs: int | None = typer.Option(None, "--epochs"),
    batch_size: int | None = typer.Option(None, "--batch-size"),
    lr: float | None = typer.Option(None, "--lr"),
    optimizer: str | None = typer.Option(None, "--optimizer", help="adam | adamw | sgd | rmsprop"),
    dropout: float | None = typer.Option(None, "--dropout"),
    patience: int | None = typer.Option(None, "--patience", help="early-stopping patience (epochs)"),
    balance: str | None = typer.Option(None, "--balance", help="none | weights | sampler"),
    augment: str | None = typer.Option(None, "--augment", help="preset: seed | xray | none"),
    augment_copies: int | None = typer.Option(None, "--augment-copies", help="K augmented copies per image"),
    feature_cache: bool | None = typer.Option(None, "--feature-cache/--no-feature-cache"),
    cache_dir: str | None = typer.Option(None, "--cache-dir"),
    num_workers: int | None = typer.Option(None, "--num-workers"),
    accelerator: str | None = typer.Option(None, "--accelerator", help="auto | cpu | gpu"),
    devices: str | None = typer.Option(None, "--devices"),
    strategy: str | None = typer.Option(None, "--strategy", help="auto | ddp | ..."),
    num_nodes: int | None = typer.Option(None, "--num-nodes"),
    precision: str | None = typer.Option(None, "--precision", help="32-true | 16-mixed | bf16-mixed"),
    seed: int | None = typer.Option(None, "--seed"),
) -> None:
    """Train a classifier into a run directory (interrupt any time; continue with --resume RUN)."""
    _execute(locals(), full_job=False)


def run_cmd(**options: Any) -> None:
    """The main job: inspect, split, train, evaluate on test, audit for shortcuts, write report.html."""
    _execute(options, full_job=True)


run_cmd.__signature__ = inspect.signature(train_cmd)  # type: ignore[attr-defined]  # same flags as train


def _execute(options: dict[str, Any], full_job: bool) -> None:
    from covidxr.pipeline import run
    from covidxr.training.job import train

    data, out, config, resume = (options.pop(k) for k in ("data", "out", "config", "resume"))
    if resume is not None:
        cfg, run_dir = Config(), resume
    else:
        cfg = load_config(config, data, options)
        run_dir = out or Path("runs") / f"{cfg.train.backbone}-{cfg.data.seed}"
    if full_job:
        if resume is not None:
            cfg = Config.from_yaml(Path(resume) / "config.yaml")
        typer.echo(run(cfg, run_dir).summary())
    else:
        typer.echo(train(cfg, run_dir, resume=resume is not None).summary())


def evaluate_cmd(
    run_dir: Path = typer.Argument(..., help="a trained run directory"),
    data: Path | None = typer.Option(None, "--data", help="an external data set (any layout) to score the run on"),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="patient-bootstrap resamples for the CIs"),
    threshold: str = typer.Option("f1", "--threshold", help="how to choose the threshold on val: f1 | youden"),
) -> None:
    """Test metrics with CIs, shortcut audit and report for a run; with --data, external validation too."""
    from covidxr.evaluation.job import comparison_table, evaluate_external, evaluate_run
    from covidxr.report.html import write_report

    if data is None:
        metrics = evaluate_run(run_dir, bootstrap, threshold)
        for warning in (metrics.get("audit") or {}).get("warnings", []):
            typer.echo(f"WARNING: {warning}")
    else:
        result = evaluate_external(run_dir, data, bootstrap)
        typer.echo(f"internal test vs external ({data}), threshold {result['threshold']:.3f} from the run's val split:")
        typer.echo(comparison_table(result))
    typer.echo(f"report: {write_report(run_dir)}")


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
    from covidxr.data.sources import load_manifest

    grid, hsv = preview_grid(load_manifest(data), preset(preset_name), out, n_images, size=size, seed=seed)
    typer.echo(f"wrote {grid} and {hsv}")


def explain_cmd(
    run_dir: Path = typer.Argument(..., help="a trained run directory"),
    images: list[Path] = typer.Argument(..., help="images or folders (searched recursively)"),
    out: Path = typer.Option(Path("explanations"), "--out"),
    mc: int = typer.Option(30, "--mc", min=1, help="MC-dropout passes"),
) -> None:
    """Feature maps per layer, Grad-CAM overlays (predicted and positive class), MC-dropout uncertainty."""
    from covidxr.explain.job import explain_images

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
    for row in result["dead"]:
        if row["dead"]:
            typer.echo(
                f"{row['layer']:<40}{row['kind']:>12}{row['channels']:>10}{row['dead']:>8}{row['fraction']:>8.0%}"
            )
    for note in result["notes"]:
        typer.echo(f"note: {note}")
    typer.echo(f"written {run_dir / 'filters.json'} and {run_dir / 'plots' / 'filters.png'}")


def predict_cmd(
    run_dir: Path = typer.Argument(..., help="a trained (and evaluated) run directory"),
    paths: list[Path] = typer.Argument(..., help="images, DICOM files or folders (searched recursively)"),
    out: Path = typer.Option(Path("predictions.csv"), "--out", help="predictions.csv or predictions.json"),
    engine: str = typer.Option("torch", "--engine", help="torch | onnx (export first)"),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    mc: int = typer.Option(0, "--mc", min=0, help="MC-dropout passes for an uncertainty column (torch engine)"),
) -> None:
    """Predict files and folders in batches, streaming to CSV/JSON; unreadable files are listed with the reason."""
    from covidxr.serve.predict import predict_to_file

    counts = predict_to_file(run_dir, paths, out, engine, batch_size, mc)
    typer.echo(f"predicted {counts['predicted']} image(s), skipped {counts['skipped']} unreadable; written to {out}")


def export_cmd(
    run_dir: Path = typer.Argument(..., help="a trained run directory"),
    fmt: str = typer.Option("onnx", "--format", help="onnx | torchscript"),
) -> None:
    """Export backbone + head (normalised batch in, logits out), checked against PyTorch on real images."""
    from covidxr.serve.export import export_run

    result = export_run(run_dir, fmt)
    typer.echo(
        f"{result['path']}: max |diff| vs PyTorch on {result['images']} real images = {result['max_abs_diff']:.2e}"
    )


def serve_cmd(
    run_dir: Path = typer.Argument(..., help="a trained (and evaluated) run directory"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    engine: str = typer.Option("torch", "--engine", help="torch | onnx (export first)"),
    workers: int = typer.Option(4, "--workers", min=1, help="inference threads"),
) -> None:
    """Web service and upload page for a run (research use only)."""
    import uvicorn

    from covidxr.serve.app import create_app

    typer.echo(f"serving {run_dir} on http://{host}:{port} (research tool, not a diagnostic device)")
    uvicorn.run(create_app(run_dir, engine, workers=workers), host=host, port=port, log_level="warning")
