"""What data a run reads and how it splits them: the data stage's own configuration (covidxr.config holds the
rest and the file format)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ConfigDict

from covidxr.data.formats import AUTO, FORMATS, FRONTAL_VIEWS
from covidxr.data.labels import DEFAULT_POSITIVE, LabelRules, Task, parse_label_map
from covidxr.data.readers import DEFAULT_MAX_PIXELS
from covidxr.data.split import DEFAULT_FRACTIONS, SplitMethod
from covidxr.fields import option


@dataclass
class DataConfig:
    __pydantic_config__ = ConfigDict(coerce_numbers_to_str=True)  # read by covidxr.config: label `1` is "1"

    paths: tuple[str, ...] = option((), "data set(s): folder, CSV or a public layout; repeat to join sets", "--data")
    format: str = option(AUTO, f"layout of every --data: auto or one of {', '.join(FORMATS)} (covidxr data formats)")
    task: Task = option("binary", "binary (positive vs rest, as the study) or multiclass")
    positive: str = option(DEFAULT_POSITIVE, "positive label of the binary task (matched after label mapping)")
    label_map: dict[str, str] = option({}, "rename/merge labels: OLD=NEW,OLD2=NEW2 or a YAML file of OLD: NEW")
    drop_labels: tuple[str, ...] = option((), "labels to leave out, comma-separated (counted as excluded)")
    split: SplitMethod = option("patient", "patient (stratified by patient) or official (the set's own test list)")
    split_fractions: tuple[float, float, float] = option(DEFAULT_FRACTIONS, "train,val,test fractions", "--fractions")
    seed: int = option(0, "seed for the split, initialisation and augmentation")
    views: tuple[str, ...] = option(FRONTAL_VIEWS, "views kept where a table names them, comma-separated")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "refuse images with more pixels (decompression-bomb guard)")

    @property
    def label_rules(self) -> LabelRules:
        return LabelRules(parse_label_map(self.label_map), tuple(self.drop_labels))
