"""Callbacks, one concern each: per-epoch seeding, history CSV, an outside per-epoch hook, atomic checkpoint
files."""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

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


class EpochSeed(L.Callback):
    """Reseed every RNG from (seed, epoch) at each epoch start, so a resumed run continues exactly as an
    uninterrupted one would (dropout masks, online augmentation), whatever happened before the restart."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        L.seed_everything(self.seed * 10_007 + trainer.current_epoch, workers=True, verbose=False)


class EpochHook(L.Callback):
    """Hands (epoch, val_loss) to an outside observer after each validation, e.g. a search's pruner."""

    def __init__(self, hook: Callable[[int, float], None]) -> None:
        self.hook = hook

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and "val_loss" in trainer.callback_metrics:
            self.hook(trainer.current_epoch, float(trainer.callback_metrics["val_loss"]))


class HistoryCSV(L.Callback):
    """One row per epoch (train and val loss/acc/F1/AUC), rewritten atomically; rows of epochs that a resumed
    run repeats are replaced, not duplicated."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / HISTORY_FILE
        self._start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        write_history_row(self.path, trainer.current_epoch, metrics, time.perf_counter() - self._start)


def write_history_row(path: Path, epoch: int, metrics: dict[str, float], seconds: float) -> None:
    """Add (or replace) one epoch's row of history.csv, atomically; rows of later epochs are dropped."""
    row: dict[str, Any] = {"epoch": epoch, "seconds": round(seconds, 3)}
    for column in HISTORY_COLUMNS[1:-1]:
        value = metrics.get(column)
        row[column] = round(float(value), 6) if value is not None else ""
    write_csv(path, HISTORY_COLUMNS, [r for r in read_history(path) if int(r["epoch"]) < epoch] + [row])


def read_history(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file and rename, so a kill -9 never leaves a half-written checkpoint; read back
    tensors and plain data only (`weights_only=True`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
