"""`Run`: a run directory opened once and handed through every stage after training.

Each of the run's facts — its config, data report, the data set as listed now, the split, the spec (with its
calibration and lung model attached), the network — is read from its file the first time a stage asks and kept,
so evaluate, explain, report, export and quantize in one process read config.yaml once, list the data once and
load the network once. Where a stage changes a fact (calibration writes calibration.json), it says so with
`calibrated`, and every later stage sees the new spec.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from functools import cached_property
from pathlib import Path

from covidxr.config import Config, DataConfig
from covidxr.data.film_cache import FilmRows, film_store
from covidxr.data.labels import LabelMap
from covidxr.data.manifest import Manifest, Record
from covidxr.data.prepare import list_data, usable_data
from covidxr.data.split import Split, read_split
from covidxr.data.validate import DataReport, read_data_report
from covidxr.errors import CovidxrError
from covidxr.models.factory import CovidxrNet, load_model
from covidxr.models.spec import ModelSpec
from covidxr.results import Evaluation, Explanation, RunCalibration, TrainState
from covidxr.rundir import RunDir
from covidxr.training.feature_cache import CachedFeatures, cache_folder


class Run:
    def __init__(
        self, root: Path | str, manifest: Manifest | None = None, features: CachedFeatures | None = None
    ) -> None:
        """`manifest`: the run's data already listed (and checked) by the caller, e.g. `covidxr run`;
        `features`: the pooled features its head was just trained on, in this process (a search's winner),
        which score its films without the backbone."""
        self.dir = RunDir(root)
        self.root = self.dir.root
        self.features = features
        if manifest is not None:
            self.__dict__["manifest"] = manifest  # what cached_property would have stored

    @classmethod
    def open(cls, run: Run | Path | str) -> Run:
        """A stage's argument as a Run: the same one when the caller has it, else the directory opened."""
        return run if isinstance(run, Run) else cls(run)

    def has(self, entry: str) -> bool:
        """Whether the run holds a file (a RunDir name): a stage that has not run has not written its file."""
        return (self.root / entry).exists()

    @cached_property
    def config(self) -> Config:
        if not self.has(RunDir.config):
            raise CovidxrError(f"{self.root}: no {RunDir.config}; not a covidxr run")
        return Config.from_yaml(self.dir.config)

    @cached_property
    def data_report(self) -> DataReport | None:
        return read_data_report(self.dir.data_report)

    @cached_property
    def manifest(self) -> Manifest:
        """The run's usable images (decoded and checked once; unreadable files skipped): what is scored."""
        return usable_data(self._data)

    @cached_property
    def listed(self) -> Manifest:
        """The run's images as listed now, nothing decoded (a stage that reads a few of them); the usable ones
        where the run has checked them already."""
        listed = self.__dict__.get("manifest") or list_data(self._data)
        with self.dir.splits.open(newline="") as fh:
            in_split = {row["path"] for row in csv.DictReader(fh)}
        return listed.subset([r for r in listed.records if r.path in in_split])

    @property
    def _data(self) -> DataConfig:
        if not self.config.data.paths:
            raise CovidxrError(f"{self.dir.config}: names no data set")
        return self.config.data

    @cached_property
    def split(self) -> Split:
        return read_split(self.dir.splits, self.manifest)

    def records(self, part: str, listed: bool = False) -> list[Record]:
        """The run's usable images of one split part (train, val, test), in the split's order; `listed`: of the
        images as listed, nothing decoded first (a stage that reads only a few)."""
        if listed:
            return read_split(self.dir.splits, self.listed).records(self.listed, part)
        return self.split.records(self.manifest, part)

    @cached_property
    def network(self) -> tuple[CovidxrNet, ModelSpec]:
        return load_model(self.root)

    @cached_property
    def spec(self) -> ModelSpec:
        """model.json with the run's calibration and lung model attached (the network's, once it is loaded)."""
        return self.network[1] if "network" in self.__dict__ else ModelSpec.read(self.root)

    @property
    def net(self) -> CovidxrNet:
        return self.network[0]

    @cached_property
    def label_map(self) -> LabelMap:
        return LabelMap(self.spec.task, tuple(self.spec.classes), self.spec.positive)  # type: ignore[arg-type]

    def calibrated(self, calibration: RunCalibration) -> ModelSpec:
        """The spec under a new calibration (written by the step that fitted it), for every later stage."""
        self.spec = replace(self.spec, calibration=calibration)
        return self.spec

    def films(self, records: list[Record]) -> FilmRows | None:
        """Where the film cache holds these films at this run's geometry (None: no cache for it); nothing is
        decoded or written here."""
        tc, spec = self.config.train, self.spec
        if spec.head == "ensemble" or not any(r.film for r in records):
            return None
        cache_dir = cache_folder(tc)
        if not cache_dir.is_dir():
            return None
        store = film_store(cache_dir, spec.preprocess, spec.lung_model, self.config.data.max_pixels)
        return FilmRows(store.locations([r.film or "" for r in records]))

    @cached_property
    def state(self) -> TrainState | None:
        return self.dir.read_state()

    @cached_property
    def evaluation(self) -> Evaluation | None:
        return self.dir.read_evaluation()

    @cached_property
    def explanation(self) -> Explanation | None:
        return self.dir.read_explanation()
