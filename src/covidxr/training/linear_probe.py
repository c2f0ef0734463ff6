"""The linear-probe baseline: standardised frozen features + L2 logistic regression, C chosen on validation.

Every head-mode run fits one beside its model (the features are cached, so it costs a second), and the report
sets the two side by side: a 64-unit head that cannot beat a linear model on the same features has learned
nothing a linear model could not. With `--head linear` the probe becomes the model, folded into one
`nn.Linear` (standardisation included) so that export, serving and explanations treat it like any head.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from torch import nn

from covidxr.atomic import write_json
from covidxr.rundir import RunDir
from covidxr.training.metrics import epoch_metrics

C_GRID = tuple(10.0**k for k in range(-4, 3))
PROBE_FILE = RunDir.linear_probe


@dataclass
class ProbeResult:
    """Validation (and test) numbers of the probe and of the trained model on the same cached features."""

    C: float
    val_nll: float
    val_auc: float
    val_acc: float
    test_auc: float
    test_acc: float
    model_val_nll: float | None = None
    model_val_auc: float | None = None

    @property
    def beats_model(self) -> bool:
        return self.model_val_nll is not None and self.val_nll < self.model_val_nll

    def write(self, run_dir: Path) -> Path:
        return write_json(run_dir / PROBE_FILE, asdict(self) | {"beats_model_on_val": self.beats_model})

    @classmethod
    def read(cls, run_dir: Path) -> ProbeResult | None:
        """linear_probe.json of a head-mode run, or None where no probe was fitted."""
        path = run_dir / PROBE_FILE
        if not path.is_file():
            return None
        known = {f.name for f in fields(cls)}  # beats_model_on_val is derived, not stored
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


class LinearProbe:
    def __init__(self, task: str, num_outputs: int) -> None:
        self.task, self.num_outputs = task, num_outputs
        self.model: LogisticRegression | None = None
        self.mean = self.scale = np.zeros(0)

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> LinearProbe:
        """Standardise on train, then the C with the lowest validation log-loss (ties: the stronger penalty)."""
        self.mean = x_train.mean(axis=0)
        self.scale = x_train.std(axis=0) + 1e-6
        best: tuple[float, LogisticRegression] | None = None
        for c in C_GRID:
            model = self._fit_one(self._standardise(x_train), y_train, c)
            nll = nll_of(self._scores(model, x_val), y_val, self.task)
            if best is None or nll < best[0] - 1e-9:
                best = (nll, model)
        assert best is not None
        self.model = best[1]
        return self

    def _fit_one(self, x: np.ndarray, y: np.ndarray, c: float) -> LogisticRegression:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(C=c, max_iter=2000).fit(x, y)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.scale

    def _scores(self, model: LogisticRegression, x: np.ndarray) -> np.ndarray:
        """Class scores in the run's convention: for binary, column 1 is the positive probability."""
        return model.predict_proba(self._standardise(x))

    def scores(self, x: np.ndarray) -> np.ndarray:
        assert self.model is not None
        return self._scores(self.model, x)

    @property
    def C(self) -> float:
        assert self.model is not None
        return float(self.model.C)

    def as_linear(self) -> nn.Linear:
        """One nn.Linear with the standardisation folded in, giving the same scores through the run's head
        convention (binary: sigmoid of output 1, whose negation is output 0; multiclass: softmax)."""
        assert self.model is not None
        coef = self.model.coef_ / self.scale  # (1 or K, F)
        bias = self.model.intercept_ - coef @ self.mean
        if self.task == "binary":
            coef, bias = np.vstack([-coef, coef]), np.concatenate([-bias, bias])
        layer = nn.Linear(coef.shape[1], coef.shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.as_tensor(coef, dtype=torch.float32))
            layer.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        return layer


def nll_of(scores: np.ndarray, y: np.ndarray, task: str) -> float:
    """Mean negative log-likelihood of the labels: the positive probability (binary) or the class's (multiclass)."""
    y = np.asarray(y).astype(int)
    if task == "binary":
        p = np.clip(scores[:, 1], 1e-7, 1 - 1e-7)
        return float(-np.mean(np.where(y == 1, np.log(p), np.log(1 - p))))
    return float(-np.mean(np.log(np.clip(scores[np.arange(len(y)), y], 1e-7, 1))))


def probe_result(probe: LinearProbe, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> ProbeResult:
    """The probe's numbers; test ones are NaN where a run has no test split (a leave-one-source-out fold)."""
    val = epoch_metrics(probe.scores(splits["val"][0]), splits["val"][1], probe.task)
    x_test, y_test = splits["test"]
    none = {"auc": float("nan"), "acc": float("nan")}
    test = epoch_metrics(probe.scores(x_test), y_test, probe.task) if len(y_test) else none
    val_nll = nll_of(probe.scores(splits["val"][0]), splits["val"][1], probe.task)
    return ProbeResult(probe.C, val_nll, val["auc"], val["acc"], test["auc"], test["acc"])
