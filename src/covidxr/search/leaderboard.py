"""One row per finished trial or run: its settings and validation metrics, sorted by val F1 then val AUC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from covidxr.atomic import write_csv
from covidxr.engine.history import read_history
from covidxr.errors import CovidxrError
from covidxr.results import SETTINGS, VAL_METRICS, LeaderboardRow
from covidxr.rundir import RunDir

LEADERBOARD_FILE = RunDir.leaderboard


def run_row(run_dir: Path, params: dict[str, Any] | None = None) -> LeaderboardRow:
    """Settings from config.yaml, validation metrics at the best epoch, time and epochs from the history."""
    import yaml

    cfg = yaml.safe_load((run_dir / RunDir.config).read_text())["train"]
    state = RunDir(run_dir).read_state()
    if state is None:
        raise CovidxrError(f"{run_dir}: no {RunDir.state}; not a trained covidxr run")
    history = read_history(run_dir / RunDir.history)
    best = next(r for r in history if int(r["epoch"]) == state.best_epoch)
    return LeaderboardRow(
        run=str(run_dir),
        settings={d: cfg.get(d) for d in SETTINGS},
        metrics={m: float(best[m]) for m in VAL_METRICS if best.get(m, "") != ""},
        best_epoch=state.best_epoch,
        epochs_run=state.epochs_run,
        train_seconds=round(sum(float(r["seconds"]) for r in history), 2),
        params=params or {},
    )


def sort_rows(rows: list[LeaderboardRow]) -> list[LeaderboardRow]:
    return sorted(rows, key=LeaderboardRow.sort_key)


def write_leaderboard(rows: list[LeaderboardRow], path: Path) -> Path:
    table = [r.to_csv() for r in rows]
    return write_csv(path, list(dict.fromkeys(k for r in table for k in r)), table)


def format_table(rows: list[LeaderboardRow], top: int | None = None) -> str:
    varying = [d for d in SETTINGS if len({str(r.value(d)) for r in rows}) > 1] or ["backbone"]
    header = ["#", *varying, "val_f1", "val_auc", "val_precision", "val_recall", "epochs", "seconds"]
    lines = ["  ".join(f"{h:>12}" for h in header)]
    for i, r in enumerate(rows[:top] if top else rows, start=1):
        values = [i, *(r.value(d) for d in varying)]
        values += [r.metrics.get(m) for m in ("val_f1", "val_auc", "val_precision", "val_recall")]
        values += [r.epochs_run, r.train_seconds]
        lines.append("  ".join(f"{_fmt(v):>12}" for v in values))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def search_plots(rows: list[LeaderboardRow], out: Path) -> list[Path]:
    """Val F1 against learning rate per backbone, and against batch size per optimizer."""
    out.mkdir(parents=True, exist_ok=True)  # the winner's plots folder: the report adds its figures after
    paths = []
    for x, by, name in (("lr", "backbone", "search_lr.png"), ("batch_size", "optimizer", "search_batch.png")):
        if len({r.value(x) for r in rows}) < 2:
            continue
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        for group in sorted({str(r.value(by)) for r in rows}):
            points: dict[float, float] = {}
            for r in rows:
                if str(r.value(by)) == group:
                    at = float(r.value(x))
                    points[at] = max(points.get(at, 0.0), r.metrics.get("val_f1", 0.0))
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
