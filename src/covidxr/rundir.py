"""The run directory, the interface between pipeline stages. Every file one stage writes and another reads is
named here once: on the class an entry is the file's name (`RunDir.metrics == "metrics.json"`), on an instance
its path (`RunDir(run).metrics`). No other module spells a run file's name."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, TypeVar, overload

from pydantic import ValidationError

from covidxr.atomic import write_json
from covidxr.errors import CovidxrError
from covidxr.results import Evaluation, Explanation, ExternalEvaluation, JsonRecord, RunCalibration, TrainState
from covidxr.site_results import Adaptation, SiteCurve

R = TypeVar("R", bound=JsonRecord)


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
    # lungs stage
    lungs = _Entry("lungs")  # the lung model the run's inputs are cut with (lungs.json + lungs.safetensors)
    # training stage
    spec = _Entry("model.json")  # ModelSpec: backbone, classes, preprocessing, weights (written once, by training)
    weights = _Entry("best.safetensors")  # the best epoch's network
    last_ckpt = _Entry("last.ckpt")  # what a resumed run continues from
    history = _Entry("history.csv")  # one row per epoch
    state = _Entry("state.json")  # TrainState: running or finished, best epoch
    linear_probe = _Entry("linear_probe.json")
    ensemble = _Entry("ensemble.json")  # members of an ensemble run
    # evaluation stage
    calibration = _Entry("calibration.json")  # RunCalibration: temperature, threshold, TTA (fitted on val)
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
    # sites (covidxr adapt)
    adapted = _Entry("adapted.json")  # Adaptation: the base run, the site, what was adapted, before and after
    site_curve = _Entry("site_curve.json")  # SiteCurve: within-site AUC against labelled films
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
        return _read(self.state, TrainState)

    def write_state(self, state: TrainState) -> None:
        write_json(self.state, state.to_json())

    def read_calibration(self) -> RunCalibration | None:
        """calibration.json, or None before the run was calibrated."""
        return _read(self.calibration, RunCalibration)

    def write_calibration(self, calibration: RunCalibration) -> None:
        write_json(self.calibration, calibration.to_json())

    def read_evaluation(self) -> Evaluation | None:
        """metrics.json, or None before the run was evaluated (it is written last, whole)."""
        return _read(self.metrics, Evaluation)

    def read_explanation(self) -> Explanation | None:
        return _read(self.explain, Explanation)

    def read_adaptation(self) -> Adaptation | None:
        """adapted.json, or None: not an adapted run."""
        return _read(self.adapted, Adaptation)

    def read_site_curve(self) -> SiteCurve | None:
        return _read(self.site_curve, SiteCurve)

    def external_results(self) -> list[ExternalEvaluation]:
        """Every external data set this run was scored on, by folder name."""
        folder = self.external
        paths = sorted(folder.glob(f"*/{RunDir.metrics}")) if folder.is_dir() else []
        return [ExternalEvaluation.from_json(json.loads(p.read_text())) for p in paths]


def _read(path: Path, kind: type[R]) -> R | None:
    """The typed result in `path`, None where the stage has not written it; one clear error where it cannot be
    read as one (hand-edited, or written by a covidxr that stored other fields)."""
    if not path.is_file():
        return None
    try:
        return kind.from_json(json.loads(path.read_text()))
    except ValidationError as exc:  # every wrong value, by where it is: "filters.dead.0.fraction: ..."
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CovidxrError(f"{path}: cannot be read as {kind.__name__} ({problems}); run its stage again") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise CovidxrError(f"{path}: cannot be read as {kind.__name__} ({exc}); run its stage again") from None


def folder_name(text: str, fallback: str) -> str:
    """A folder name inside a run for a data set or source name: runs of other characters become one "-"."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or fallback
