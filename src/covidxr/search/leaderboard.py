"""One row per finished trial or run: its settings and validation metrics, sorted by val F1 then val AUC."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from covidxr.atomic import write_csv
from covidxr.errors import CovidxrError
from covidxr.rundir import RunDir
from covidxr.training.callbacks import read_history

LEADERBOARD_FILE = RunDir.leaderboard
DIMENSIONS = ("backbone", "weights", "lr", "batch_size", "optimizer", "dropout", "freeze", "epochs", "augment")
METRICS = ("val_f1", "val_precision", "val_recall", "val_auc", "val_acc", "val_loss")


def run_row(run_dir: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Settings from config.yaml, validation metrics at the best epoch, time and epochs from the history."""
    import yaml

    cfg = yaml.safe_load((run_dir / RunDir.config).read_text())["train"]
    state = RunDir(run_dir).read_state()
    if state is None:
        raise CovidxrError(f"{run_dir}: no {RunDir.state}; not a trained covidxr run")
    history = read_history(run_dir / RunDir.history)
    best = next(r for r in history if int(r["epoch"]) == state.best_epoch)
    row: dict[str, Any] = {"run": str(run_dir)}
    row |= {d: cfg.get(d) for d in DIMENSIONS}
    row |= {m: float(best[m]) for m in METRICS if best.get(m, "") != ""}
    row |= {"best_epoch": state.best_epoch, "epochs_run": state.epochs_run}
    row["train_seconds"] = round(sum(float(r["seconds"]) for r in history), 2)
    return row | (extra or {})


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Val F1, ties broken by val AUC, then by lower val loss (shortcut-ridden data ties at F1 = AUC = 1)."""
    return sorted(rows, key=lambda r: (-r.get("val_f1", 0.0), -r.get("val_auc", 0.0), r.get("val_loss", 0.0)))


def write_leaderboard(rows: list[dict[str, Any]], path: Path) -> Path:
    return write_csv(path, list(dict.fromkeys(k for r in rows for k in r)), rows)


def read_leaderboard(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def format_table(rows: list[dict[str, Any]], top: int | None = None) -> str:
    varying = [d for d in DIMENSIONS if len({str(r.get(d)) for r in rows}) > 1] or ["backbone"]
    header = ["#", *varying, "val_f1", "val_auc", "val_precision", "val_recall", "epochs", "seconds"]
    lines = ["  ".join(f"{h:>12}" for h in header)]
    for i, r in enumerate(rows[:top] if top else rows, start=1):
        values = [i, *(r.get(d) for d in varying), r.get("val_f1"), r.get("val_auc"), r.get("val_precision")]
        values += [r.get("val_recall"), r.get("epochs_run"), r.get("train_seconds")]
        lines.append("  ".join(f"{_fmt(v):>12}" for v in values))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def search_plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Val F1 against learning rate per backbone, and against batch size per optimizer."""
    out.mkdir(parents=True, exist_ok=True)  # the winner's plots folder: the report adds its figures after
    paths = []
    for x, by, name in (("lr", "backbone", "search_lr.png"), ("batch_size", "optimizer", "search_batch.png")):
        if len({r.get(x) for r in rows}) < 2:
            continue
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        for group in sorted({str(r.get(by)) for r in rows}):
            points: dict[float, float] = {}
            for r in rows:
                if str(r.get(by)) == group:
                    points[float(r[x])] = max(points.get(float(r[x]), 0.0), float(r.get("val_f1", 0.0)))
            xs = sorted(points)
            ax.plot(xs, [points[v] for v in xs], "-o", label=group)
        if x == "lr":
            ax.set_xscale("log")
        ax.set(xlabel=x, ylabel="best val F1", title=f"val F1 vs {x} per {by}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        paths.append(out / name)
    return paths
