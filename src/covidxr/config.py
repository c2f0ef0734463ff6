"""Typed configuration. Every CLI flag maps to a field here; the resolved config is saved with each run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from covidxr.data.labels import DEFAULT_POSITIVE, Task
from covidxr.data.readers import DEFAULT_MAX_PIXELS
from covidxr.data.sources import FRONTAL_VIEWS
from covidxr.data.split import DEFAULT_FRACTIONS
from covidxr.errors import CovidxrError


@dataclass
class DataConfig:
    path: str | None = None  # the data set a run was trained on (folder, CSV or Cohen metadata)
    task: Task = "binary"
    positive: str = DEFAULT_POSITIVE
    max_pixels: int = DEFAULT_MAX_PIXELS
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    seed: int = 0
    views: tuple[str, ...] = FRONTAL_VIEWS


@dataclass
class TrainConfig:
    """The study's defaults (lr 1e-4, batch 16, Adam, 20 epochs), on a backbone whose weights ship offline."""

    backbone: str = "tf_efficientnet_lite0"
    weights: str = "imagenet"  # imagenet | none | path to .safetensors / state dict
    freeze: str = "head"  # head | last-k | full
    last_k: int = 1
    input_size: int | None = None  # None: the backbone's own (299 for the Inceptions)
    hidden: int = 64
    dropout: float = 0.3
    cnn_widths: tuple[int, ...] = (32, 64, 128, 128)  # simple_cnn only: one block per width
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-4
    optimizer: str = "adam"  # adam | adamw | sgd | rmsprop
    weight_decay: float = 0.0
    momentum: float = 0.9
    patience: int = 5
    balance: str = "none"  # none | weights (class-weighted loss) | sampler (balanced sampling)
    augment: str = "xray"  # preset name: seed (the study's), xray, none
    augment_ops: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-op {p, ranges} over the preset
    augment_copies: int = 1  # K augmented copies per training image, materialised (the study doubled: K=1)
    feature_cache: bool = True  # with freeze=head: extract backbone features once, train the head on them
    cache_dir: str | None = None  # None: $COVIDXR_CACHE or ~/.cache/covidxr
    num_workers: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_yaml(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(_plain(self.to_dict()), sort_keys=False))

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        return cls(
            data=_section(DataConfig, raw.get("data") or {}, "data"),
            train=_section(TrainConfig, raw.get("train") or {}, "train"),
        )

    @classmethod
    def from_yaml(cls, path: Path) -> Config:
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CovidxrError(f"{path}: cannot read config ({exc})") from exc
        if not isinstance(raw, dict):
            raise CovidxrError(f"{path}: a config file must be a mapping of sections")
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise CovidxrError(f"{path}: unknown section(s) {sorted(unknown)}")
        return cls.from_dict(raw)


def _section(kind: type, raw: dict[str, Any], name: str) -> Any:
    known = {f.name for f in fields(kind)}
    unknown = set(raw) - known
    if unknown:
        raise CovidxrError(f"config section {name!r}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return kind(**values)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
