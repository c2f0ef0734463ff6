"""Label names and class order.

Public data sets spell one finding many ways (`COVID`, `covid19`, `NORMAL`, `No Finding`, `Viral Pneumonia`);
`canonical_label` maps those spellings to one name so that sets can be combined and `--positive COVID-19`
finds its images in any of them. `LabelRules` applies the user's own renames and drops after that, and
`LabelMap` fixes the class order of a task (binary positive-vs-rest, or multiclass) once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from covidxr.errors import DataError

Task = Literal["binary", "multiclass"]
DEFAULT_POSITIVE = "COVID-19"

# Spellings seen in the public sets (after lower-casing and folding '_', '-' and spaces), to one name each.
_SYNONYMS: dict[str, tuple[str, ...]] = {
    "COVID-19": ("covid", "covid 19", "covid19", "covid 19 pneumonia", "covid pneumonia", "sars cov 2"),
    "normal": ("normal", "no finding", "healthy"),
    "pneumonia": ("pneumonia", "viral pneumonia", "bacterial pneumonia"),
    "lung opacity": ("lung opacity",),
}
_CANONICAL = {spelling: name for name, spellings in _SYNONYMS.items() for spelling in spellings}


def _fold(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower()).strip()


def canonical_label(raw: str) -> str:
    """The canonical name of a data-set label; names we do not know pass through unchanged (trimmed)."""
    return _CANONICAL.get(_fold(raw), raw.strip())


@dataclass(frozen=True)
class LabelRules:
    """The user's label edits, applied after canonicalisation: rename/merge (`A=B`), then drop."""

    rename: Mapping[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()

    def apply(self, raw: str) -> str | None:
        """The final label for a raw data-set label, or None when it is dropped.

        A rule names a raw spelling (`Viral Pneumonia`: only those images) or a canonical name (`pneumonia`:
        every spelling of it); case, `_` and `-` do not matter.
        """
        label = canonical_label(raw)
        names = {_fold(raw), _fold(label)}
        label = next((canonical_label(new) for old, new in self.rename.items() if _fold(old) in names), label)
        names.add(_fold(label))
        return None if any(_fold(d) in names for d in self.drop) else label


def parse_label_map(text: str | Path | Mapping[str, str] | None) -> dict[str, str]:
    """`A=B,C=D`, a YAML file of `A: B` pairs, or a mapping, as a dict of raw -> new label."""
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        return {str(k): str(v) for k, v in text.items()}
    text = str(text)
    if Path(text).suffix.lower() in (".yaml", ".yml"):
        path = Path(text)
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise DataError(f"{path}: cannot read the label map ({exc})") from exc
        if not isinstance(raw, dict):
            raise DataError(f"{path}: a label map file must hold 'old: new' pairs")
        return {str(k): str(v) for k, v in raw.items()}
    pairs = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise DataError(f"--label-map: expected OLD=NEW pairs separated by commas, got {item!r}")
        pairs[old.strip()] = new.strip()
    return pairs


@dataclass(frozen=True)
class LabelMap:
    """Class order is fixed here once; models, metrics and reports all read it from the ModelSpec later."""

    task: Task
    classes: tuple[str, ...]
    positive: str | None = None  # binary only: the data-set label that maps to class 1

    @classmethod
    def from_labels(cls, labels: Iterable[str], task: Task = "binary", positive: str = DEFAULT_POSITIVE) -> LabelMap:
        present = sorted(set(labels))
        if task == "binary":
            wanted = canonical_label(positive)
            if wanted not in present:
                raise DataError(
                    f"positive label {positive!r} is not in the data (labels found: {', '.join(present) or 'none'}); "
                    "choose one with --positive"
                )
            return cls("binary", (f"not {wanted}", wanted), wanted)
        if task == "multiclass":
            return cls("multiclass", tuple(present))
        raise DataError(f"unknown task {task!r}: use 'binary' or 'multiclass'")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def knows(self, label: str) -> bool:
        """Whether a label can be scored: any label in the binary task, a class name in multiclass."""
        return self.task == "binary" or label in self.classes

    def encode(self, label: str) -> int:
        if self.task == "binary":
            return int(label == self.positive)
        try:
            return self.classes.index(label)
        except ValueError:
            raise DataError(f"label {label!r} is not one of the classes {list(self.classes)}") from None

    def class_name(self, label: str) -> str:
        return self.classes[self.encode(label)]
