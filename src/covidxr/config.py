"""Typed configuration. Every CLI flag maps to a field here; the resolved config is saved with each run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, TypeAdapter, ValidationError

from covidxr.data.choices import Equalize, LungInput, ResizeMode
from covidxr.data.config import DataConfig
from covidxr.errors import CovidxrError
from covidxr.fields import option

__all__ = ["Config", "DataConfig", "TrainConfig"]  # DataConfig lives with the data stage that reads it


Recipe = Literal["default", "study"]
FreezePolicy = Literal["head", "last-k", "full"]
OptimizerName = Literal["adam", "adamw", "sgd", "rmsprop"]
Balance = Literal["none", "weights", "sampler", "source"]
LrSchedule = Literal["none", "plateau"]
HeadKind = Literal["mlp", "linear"]

# What a recipe sets for every field left unset (None). `study`: the paper's 20 epochs at lr 1e-4, batch 16,
# Adam, early stopping. `default`: a head on cached features costs milliseconds an epoch, so it trains to
# convergence instead: a higher head learning rate (chosen by benchmarks/bench_quality.py), halved when
# validation loss stalls, a generous cap and patience; whole-network fine-tuning keeps the gentler rate.
RECIPES: dict[str, dict[str, dict[str, Any]]] = {
    "study": {
        "head": {"epochs": 20, "lr": 1e-4, "patience": 5, "lr_schedule": "none"},
        "other": {"epochs": 20, "lr": 1e-4, "patience": 5, "lr_schedule": "none"},
    },
    "default": {
        "head": {"epochs": 300, "lr": 1e-3, "patience": 20, "lr_schedule": "plateau"},
        "other": {"epochs": 30, "lr": 1e-4, "patience": 6, "lr_schedule": "plateau"},
    },
}


# What --lung-model alone applies, chosen in benchmarks/bench_lungs.py on hospitals no run saw: `mask` had the best
# mean within-source AUC on cxr-lungs (0.644 vs crop 0.630, none 0.597; CIs overlap) and is the only cut after which
# the model needs the lungs (lungs-hidden AUC 0.43-0.53 vs 0.99 with crop). --lungs stays none without a model.
DEFAULT_LUNG_INPUT: LungInput = "mask"


@dataclass
class TrainConfig:
    """Hyperparameters; epochs, lr, patience and schedule come from the recipe unless given."""

    __pydantic_config__ = ConfigDict(coerce_numbers_to_str=True)  # how _section reads it: `devices: 2` is "2"

    backbone: str = option("tf_efficientnet_lite0", "registry name, e.g. resnet50, simple_cnn")
    weights: str = option(
        "imagenet", "imagenet | xrv (torchxrayvision's backbones) | none | PATH (.safetensors or state dict)"
    )
    freeze: FreezePolicy = option("head", "head | last-k | full")
    last_k: int = option(1, "stages trained with --freeze last-k")
    input_size: int | None = option(None, "override the backbone's input size (299 for the Inceptions)")
    head: HeadKind = option("mlp", "mlp (the study's Dense(64)-ReLU-Dropout) or linear (the linear probe as model)")
    hidden: int = option(64, "units of the head's hidden layer")
    dropout: float = option(0.3, "dropout before the head's output layer")
    resize: ResizeMode = option("squash", "squash (the study's), pad (keep aspect) or crop (central square)")
    border_crop: float = option(0.0, "fraction cut from every side before resizing (markers, collimator edges)")
    equalize: Equalize = option("none", "per-image histogram equalisation: none, hist or clahe")
    lung_crop: bool = option(False, "crop every image to the lung box of the training set's lung masks")
    lungs: LungInput | None = option(
        None, "each film cut to its own lungs: none, crop (lung box) or mask (crop, outside flattened); "
        f"default: {DEFAULT_LUNG_INPUT} with --lung-model, else none",
    )  # fmt: skip
    lung_model: str | None = option(
        None, "lung model folder (covidxr lungs train); with --lungs crop|mask and none given, one is trained "
        "first on the training films' lung masks",
    )  # fmt: skip
    cnn_widths: tuple[int, ...] = option((32, 64, 128, 128), "simple_cnn only: one block per width, comma-separated")
    recipe: Recipe = option("default", "default (trains the head to convergence) or study (the paper's settings)")
    epochs: int | None = option(None, "maximum epochs (default: from the recipe)")
    batch_size: int = option(16, "images per step")
    lr: float | None = option(None, "learning rate (default: from the recipe)")
    lr_schedule: LrSchedule | None = option(None, "none or plateau (halve lr when val loss stalls; default: recipe)")
    optimizer: OptimizerName = option("adam", "adam | adamw | sgd | rmsprop")
    weight_decay: float = option(0.0, "weight decay")
    momentum: float = option(0.9, "momentum (sgd, rmsprop)")
    patience: int | None = option(None, "early-stopping patience in epochs (default: from the recipe)")
    balance: Balance = option(
        "none", "none | weights (class-weighted loss) | sampler (class-balanced draws) | source (draws balanced "
        "over each source and class pair)",
    )  # fmt: skip
    augment: str = option(
        "xray", "augmentation preset: seed (the study's), xray, xray-strong (xray + gamma, contrast, blur, noise), none"
    )
    augment_ops: dict[str, dict[str, Any]] = option({}, "per-op overrides over the preset: YAML text or file")
    augment_copies: int = option(1, "K augmented copies per training image, materialised (the study doubled: K=1)")
    feature_cache: bool = option(True, "with --freeze head: extract backbone features once, train the head on them")
    cache_dir: str | None = option(None, "feature cache folder (default $COVIDXR_CACHE or ~/.cache/covidxr)")
    num_workers: int = option(0, "data-loader worker processes")
    accelerator: str = option("auto", "auto | cpu | gpu")
    devices: str = option("auto", "devices (Lightning syntax)")
    strategy: str = option("auto", "auto | ddp | ...")
    num_nodes: int = option(1, "nodes for distributed training")
    precision: str = option("32-true", "32-true | 16-mixed | bf16-mixed")

    def resolved(self) -> TrainConfig:
        """A copy with every field the recipe sets filled in (what a run records in its config.yaml)."""
        if self.recipe not in RECIPES:
            raise CovidxrError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        preset = RECIPES[self.recipe]["head" if self.freeze == "head" else "other"]
        lungs = self.lungs or (DEFAULT_LUNG_INPUT if self.lung_model else "none")
        return replace(self, lungs=lungs, **{k: v for k, v in preset.items() if getattr(self, k) is None})


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
    """One section read into its dataclass by pydantic: every value checked against its field's type (a choice
    against its Literal, "1e-4" read as a float, a YAML list as a tuple, a number where text is meant as text)."""
    if kind is DataConfig and "path" in raw:  # runs made before several --data: one `path`
        old = raw.pop("path")
        raw.setdefault("paths", [old] if old else [])
    known = {f.name for f in fields(kind)}
    unknown = set(raw) - known
    if unknown:
        raise CovidxrError(f"config section {name!r}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        return _adapter(kind).validate_python(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(e) for e in exc.errors())
        raise CovidxrError(f"config section {name!r}: {problems}") from None


@cache
def _adapter(kind: type) -> TypeAdapter[Any]:
    return TypeAdapter(kind)


def _problem(error: Any) -> str:
    """ "freeze = 'half' is not one of 'head', 'last-k' or 'full'", "epochs = 'ten': Input should be a valid
    integer, ..." """
    where = ".".join(map(str, error["loc"]))
    if error["type"] == "literal_error":
        return f"{where} = {error['input']!r} is not one of {error['ctx']['expected']}"
    return f"{where} = {error['input']!r}: {error['msg']}"


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
