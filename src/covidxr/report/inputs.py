"""What the report stage reads from a run, each file read (and the data set listed) at most once per report:
the figures and the sections share one RunFiles."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from covidxr.config import Config
from covidxr.data.manifest import Manifest
from covidxr.data.prepare import list_data
from covidxr.data.validate import DataReport, read_data_report
from covidxr.errors import CovidxrError
from covidxr.models.spec import ModelSpec
from covidxr.results import Evaluation, Explanation, TrainState
from covidxr.rundir import RunDir


class RunFiles:
    def __init__(self, run_dir: Path | str) -> None:
        self.run = RunDir(run_dir)

    @cached_property
    def config(self) -> Config | None:
        return Config.from_yaml(self.run.config) if self.run.config.is_file() else None

    @cached_property
    def spec(self) -> ModelSpec | None:
        return ModelSpec.read(self.run.root) if self.run.spec.is_file() else None

    @cached_property
    def state(self) -> TrainState | None:
        return self.run.read_state()

    @cached_property
    def data_report(self) -> DataReport | None:
        return read_data_report(self.run.data_report)

    @cached_property
    def evaluation(self) -> Evaluation | None:
        return self.run.read_evaluation()

    @cached_property
    def explanation(self) -> Explanation | None:
        return self.run.read_explanation()

    @cached_property
    def manifest(self) -> Manifest:
        """The run's data set as listed now (raises where it has moved since training or no config names it)."""
        if self.config is None:
            raise CovidxrError(f"{self.run.root}: no {RunDir.config}; not a covidxr run")
        return list_data(self.config.data)
