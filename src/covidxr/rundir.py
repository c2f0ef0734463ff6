"""The run directory, the interface between pipeline stages. Every file one stage writes and another reads is
named here once: on the class an entry is the file's name (`RunDir.metrics == "metrics.json"`), on an instance
its path (`RunDir(run).metrics`). No other module spells a run file's name."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, overload


class _Entry:
    def __init__(self, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, run: None, owner: Any) -> str: ...

    @overload
    def __get__(self, run: RunDir, owner: Any) -> Path: ...

    def __get__(self, run: RunDir | None, owner: Any) -> str | Path:
        return self.name if run is None else run.root / self.name


class RunDir:
    # data stage
    config = _Entry("config.yaml")  # the resolved Config the run was made with
    data_report = _Entry("data_report.json")  # validation report: broken files, duplicates
    splits = _Entry("splits.csv")  # patient-level split, one row per image
    # training stage
    spec = _Entry("model.json")  # ModelSpec: backbone, classes, preprocessing, threshold, temperature
    weights = _Entry("best.safetensors")  # the best epoch's network
    best_ckpt = _Entry("best.ckpt")
    last_ckpt = _Entry("last.ckpt")  # what a resumed run continues from
    history = _Entry("history.csv")  # one row per epoch
    state = _Entry("state.json")  # TrainState: running or finished, best epoch
    linear_probe = _Entry("linear_probe.json")
    ensemble = _Entry("ensemble.json")  # members of an ensemble run
    # evaluation stage
    metrics = _Entry("metrics.json")
    predictions = _Entry("predictions.csv")
    external = _Entry("external")  # one folder per external data set
    by_source = _Entry("by_source.json")
    by_source_dir = _Entry("by_source")
    # explain stage
    explain = _Entry("explain.json")
    filters = _Entry("filters.json")
    uncertainty = _Entry("uncertainty.json")
    # report stage
    report = _Entry("report.html")
    plots = _Entry("plots")
    # search (its folder, and the winner's run)
    leaderboard = _Entry("leaderboard.csv")
    trials = _Entry("trials")
    grid = _Entry("grid.json")
    search_db = _Entry("search.db")
    # export
    onnx = _Entry("model.onnx")
    onnx_int8 = _Entry("model.int8.onnx")
    torchscript = _Entry("model.torchscript.pt")

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def export_record(self, fmt: str) -> Path:
        return self.root / f"export_{fmt}.json"

    def read_state(self) -> TrainState | None:
        """The training state, or None before training started."""
        return TrainState.from_json(json.loads(self.state.read_text())) if self.state.is_file() else None

    def write_state(self, state: TrainState) -> None:
        tmp = self.state.with_name(f".{self.state.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state.to_json(), indent=2) + "\n")
        tmp.replace(self.state)


@dataclass
class TrainState:
    """state.json: whether training finished, and what it found (an ensemble trains nothing: `ensemble` members)."""

    status: Literal["running", "finished"]
    best_epoch: int = -1
    best_val_loss: float = float("nan")
    epochs_run: int = 0
    cache_hit: bool | None = None  # None: the feature cache was not used
    cache_key: str | None = None
    head: str | None = None  # "linear probe, C = ..." when the probe is the model
    ensemble: int | None = None

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> TrainState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})
