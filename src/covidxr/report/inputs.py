"""What the report stage reads from a run: the report's view of a Run (covidxr.run), where a stage that has not run
yet gives None; each file is read (and the data set listed) at most once per report, by the Run."""

from __future__ import annotations

from covidxr.config import Config
from covidxr.data.manifest import Manifest
from covidxr.data.validate import DataReport
from covidxr.models.spec import ModelSpec
from covidxr.results import Evaluation, Explanation, TrainState
from covidxr.run import Run
from covidxr.rundir import RunDir


class RunFiles:
    def __init__(self, run: Run) -> None:
        self.source = run
        self.run = run.dir

    @property
    def config(self) -> Config | None:
        return self.source.config if self.source.has(RunDir.config) else None

    @property
    def spec(self) -> ModelSpec | None:
        return self.source.spec if self.source.has(RunDir.spec) else None

    @property
    def state(self) -> TrainState | None:
        return self.source.state

    @property
    def data_report(self) -> DataReport | None:
        return self.source.data_report

    @property
    def evaluation(self) -> Evaluation | None:
        return self.source.evaluation

    @property
    def explanation(self) -> Explanation | None:
        return self.source.explanation

    @property
    def manifest(self) -> Manifest:
        """The run's images as listed now (raises where they have moved since training or no config names them)."""
        return self.source.listed
