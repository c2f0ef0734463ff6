"""Map data-set labels to class indices: the study's binary task (COVID-19 vs rest) or multiclass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from covidxr.errors import DataError

Task = Literal["binary", "multiclass"]
DEFAULT_POSITIVE = "COVID-19"


@dataclass(frozen=True)
class LabelMap:
    """Class order is fixed here once; models, metrics and reports all read it from the ModelSpec later."""

    task: Task
    classes: tuple[str, ...]
    positive: str | None = None  # binary only: the data-set label that maps to class 1

    @classmethod
    def from_labels(cls, labels: list[str], task: Task = "binary", positive: str = DEFAULT_POSITIVE) -> LabelMap:
        present = sorted(set(labels))
        if task == "binary":
            if positive not in present:
                raise DataError(
                    f"positive label {positive!r} is not in the data (labels found: {', '.join(present) or 'none'}); "
                    "choose one with --positive"
                )
            return cls("binary", (f"not {positive}", positive), positive)
        if task == "multiclass":
            return cls("multiclass", tuple(present))
        raise DataError(f"unknown task {task!r}: use 'binary' or 'multiclass'")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def encode(self, label: str) -> int:
        if self.task == "binary":
            return int(label == self.positive)
        try:
            return self.classes.index(label)
        except ValueError:
            raise DataError(f"label {label!r} is not one of the classes {list(self.classes)}") from None

    def class_name(self, label: str) -> str:
        return self.classes[self.encode(label)]
