"""history.csv: one row per epoch, rewritten atomically; a resumed run's repeated epochs replace their rows."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from covidxr.atomic import write_csv
from covidxr.rundir import RunDir

HISTORY_FILE = RunDir.history
HISTORY_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "train_f1",
    "train_auc",
    "val_loss",
    "val_acc",
    "val_precision",
    "val_recall",
    "val_f1",
    "val_auc",
    "seconds",
)


def write_history_row(
    path: Path, epoch: int, metrics: dict[str, float], seconds: float, columns: Sequence[str] = HISTORY_COLUMNS
) -> None:
    """Add (or replace) one epoch's row of history.csv, atomically; rows of later epochs are dropped.
    `columns`: epoch, the logged numbers, seconds (a classifier's by default)."""
    row: dict[str, Any] = {"epoch": epoch, "seconds": round(seconds, 3)}
    for column in columns[1:-1]:
        value = metrics.get(column)
        row[column] = round(float(value), 6) if value is not None else ""
    write_csv(path, columns, [r for r in read_history(path) if int(r["epoch"]) < epoch] + [row])


def read_history(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))
