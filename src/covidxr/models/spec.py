"""ModelSpec (`model.json`): everything needed to rebuild a trained model and feed it correctly.

Evaluate, explain, predict, export and serve read the model's facts from here and nowhere else. It is frozen:
training writes model.json once; the run's calibration (calibration.json, fitted later on val) and its lung
model are attached when the run is read, and a changed spec is a new one (`dataclasses.replace`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from covidxr.atomic import write_json
from covidxr.data.choices import Equalize, LungInput, ResizeMode
from covidxr.data.dataset import LungFinder, Preprocess
from covidxr.data.labels import DEFAULT_POSITIVE
from covidxr.errors import CovidxrError
from covidxr.models.head import positive_scores
from covidxr.results import RunCalibration
from covidxr.rundir import RunDir

SPEC_FILE = RunDir.spec


LEGACY_CALIBRATION = ("threshold", "temperature", "tta")  # in model.json before calibration.json existed
NOT_SAVED = ("finder", "calibration")


@dataclass(frozen=True)
class ModelSpec:
    backbone: str
    weights: str  # where the initial weights came from: imagenet:bundled:..., imagenet:cache:..., file:..., none
    task: str
    classes: list[str]
    positive: str | None
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    hidden: int = 64
    dropout: float = 0.3
    freeze: str = "head"
    head: str = "mlp"  # mlp (the study's Dense(64)-ReLU-Dropout) | linear (the fitted linear probe)
    resize: ResizeMode = "squash"  # see data.dataset.Preprocess
    border_crop: float = 0.0
    equalize: Equalize = "none"
    lung_box: tuple[float, float, float, float] | None = None  # --lung-crop: box from the training lung masks
    lungs: LungInput = "none"  # none | crop | mask: each film restricted to its own lungs by the run's lung model
    lung_model: str | None = None  # sha256 of the run's lung model weights (RunDir.lungs), when lungs is not none
    channels: int = 3  # input channels: 1 for torchxrayvision's backbones (their scaling is in mean/std)
    weights_sha256: str | None = None  # sha256 of the initial backbone weights file that was loaded
    extra: dict[str, Any] = field(default_factory=dict)
    finder: LungFinder | None = field(default=None, compare=False, repr=False)  # the loaded lung model; not saved
    calibration: RunCalibration = field(default_factory=RunCalibration, compare=False)  # calibration.json

    def with_calibration(self, **changes: Any) -> ModelSpec:
        """This spec with some calibration values changed (an ONNX graph that holds the temperature: T 1)."""
        return replace(self, calibration=replace(self.calibration, **changes))

    @property
    def threshold(self) -> float:
        """Decision threshold on the positive score, chosen on the val split."""
        return self.calibration.threshold

    @property
    def temperature(self) -> float:
        """Logits are divided by it before scores (temperature scaling, fitted on val)."""
        return self.calibration.temperature

    @property
    def tta(self) -> bool:
        """Score the mean logits over small shifts and scales (models.tta); chosen by evaluate --tta."""
        return self.calibration.tta

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class scores: sigmoids of the study's binary head, softmax for multiclass."""
        return positive_scores(logits / self.temperature, self.task)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Predicted class per row: the validated threshold on the positive score (binary), else argmax."""
        if self.task == "binary":
            return (scores[:, 1] >= self.threshold).astype(int)
        return scores.argmax(axis=1)

    @property
    def audit_class(self) -> int:
        """The class the audit and per-source rates treat as positive: the positive class, else COVID-19 (or the
        last class) of a multiclass run."""
        if self.task == "binary":
            return 1
        return self.classes.index(DEFAULT_POSITIVE) if DEFAULT_POSITIVE in self.classes else len(self.classes) - 1

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(
            self.input_size,
            (self.mean[0], self.mean[1], self.mean[2]),
            (self.std[0], self.std[1], self.std[2]),
            self.resize,
            self.border_crop,
            self.equalize,
            (self.lung_box[0], self.lung_box[1], self.lung_box[2], self.lung_box[3]) if self.lung_box else None,
            self.lungs,
            self.finder,
            self.channels,
        )

    def write(self, run_dir: Path) -> Path:
        saved = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in NOT_SAVED}
        return write_json(Path(run_dir) / SPEC_FILE, saved)

    def with_lungs(self, run_dir: Path) -> ModelSpec:
        """This spec with the run's lung model as its finder, checked against the sha256 the run recorded."""
        if self.lungs == "none":
            return self
        from covidxr.lungs import LungView, load_lung_model

        model = load_lung_model(Path(run_dir) / RunDir.lungs)
        if model.sha256 != self.lung_model:
            raise CovidxrError(
                f"{model.folder}: this lung model (sha256 {model.sha256[:12]}) is not the one the run was trained "
                f"with ({(self.lung_model or 'none')[:12]}); the classifier only fits the films its own lung model cut"
            )
        return replace(self, finder=LungView(model))

    @classmethod
    def read(cls, run_dir: Path) -> ModelSpec:
        path = Path(run_dir) / SPEC_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise CovidxrError(f"{path}: not found; is {run_dir} a covidxr run directory?") from None
        except json.JSONDecodeError as exc:
            raise CovidxrError(f"{path}: not valid JSON ({exc})") from exc
        raw["mean"], raw["std"] = tuple(raw["mean"]), tuple(raw["std"])
        legacy = RunCalibration(**{k: raw.pop(k) for k in LEGACY_CALIBRATION if k in raw})
        calibration = RunDir(run_dir).read_calibration() or legacy
        return cls(**raw, calibration=calibration).with_lungs(Path(run_dir))
