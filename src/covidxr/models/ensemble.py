"""Ensembles (DeepCOVID-XR's recipe): the mean of several runs' calibrated scores, as one network.

`EnsembleNet` outputs logits whose scores (through the run's head convention, temperature 1) are exactly the
members' mean calibrated probabilities, so evaluate, predict, serve and export treat an ensemble run like any
other. Members must see the same input (size, normalisation, preprocessing) and share one split: a member
trained on another split could have trained on the ensemble's test images.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from covidxr.atomic import write_json
from covidxr.errors import CovidxrError
from covidxr.models.spec import ModelSpec
from covidxr.results import RunCalibration, TrainState
from covidxr.rundir import RunDir

ENSEMBLE_FILE = RunDir.ensemble
SHARED_FILES = (RunDir.config, RunDir.splits, RunDir.data_report)
INPUT_FACTS = (
    "task", "classes", "positive", "input_size", "mean", "std", "resize", "border_crop", "equalize", "lung_box",
    "lungs", "lung_model",
)  # fmt: skip


class EnsembleNet(nn.Module):
    def __init__(self, members: Sequence[tuple[nn.Module, ModelSpec]], task: str) -> None:
        super().__init__()
        self.members = nn.ModuleList([net for net, _ in members])
        self.specs = [spec for _, spec in members]
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([spec.scores(net(x)) for net, spec in zip(self.members, self.specs, strict=True)]).mean(0)
        if self.task == "binary":  # the study's head: sigmoid of output 1; output 0 is its complement
            p = probs[:, 1].clamp(1e-6, 1 - 1e-6)
            z = torch.log(p) - torch.log1p(-p)  # logit, in operators every exporter knows
            return torch.stack([-z, z], dim=1)
        return probs.clamp_min(1e-12).log()  # softmax(log p) = p


def member_dirs(run_dir: Path) -> list[Path]:
    return [Path(p) for p in json.loads((run_dir / ENSEMBLE_FILE).read_text())["members"]]


def is_ensemble(run_dir: Path) -> bool:
    return (Path(run_dir) / ENSEMBLE_FILE).is_file()


def load_ensemble(run_dir: Path) -> tuple[EnsembleNet, ModelSpec]:
    from covidxr.models.factory import load_model

    spec = ModelSpec.read(run_dir)
    members = [load_model(member) for member in member_dirs(run_dir)]
    return EnsembleNet(members, spec.task).eval(), spec


def create_ensemble(runs: list[Path], out: Path) -> Path:
    """Write an ensemble run directory over finished, calibrated runs that share their input and split."""
    if len(runs) < 2:
        raise CovidxrError("an ensemble needs at least two runs")
    specs = [ModelSpec.read(r) for r in runs]
    first = specs[0]
    for run, spec in zip(runs[1:], specs[1:], strict=True):
        differ = [f for f in INPUT_FACTS if getattr(spec, f) != getattr(first, f)]
        if differ:
            raise CovidxrError(f"{run}: differs from {runs[0]} in {', '.join(differ)}; ensemble members must match")
        if (run / RunDir.splits).read_bytes() != (runs[0] / RunDir.splits).read_bytes():
            raise CovidxrError(f"{run}: another split than {runs[0]}: its training images may be the ensemble's test")
    out.mkdir(parents=True, exist_ok=True)
    for name in SHARED_FILES:
        shutil.copy(runs[0] / name, out / name)
    if first.lungs != "none":  # the members' one lung model (INPUT_FACTS checked its sha256) cuts the ensemble's films
        shutil.copytree(runs[0] / RunDir.lungs, out / RunDir.lungs, dirs_exist_ok=True)
    members = [f"{s.backbone} ({s.head} head, T {s.temperature:.2f})" for s in specs]
    spec = replace(first, head="ensemble", calibration=RunCalibration(), extra={"members": members})
    spec.write(out)
    write_json(out / ENSEMBLE_FILE, {"members": [str(r.resolve()) for r in runs]})
    RunDir(out).write_state(TrainState("finished", ensemble=len(runs)))
    return out
