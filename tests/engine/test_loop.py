"""The one training loop's rules, on a tiny model: a non-finite monitored number stops training there, a number
to maximise (Dice) is followed as well as one to minimise, patience counts epochs without a strictly better
one, a last.ckpt of another format is refused by name, and a finished run resumed does no more epochs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from covidxr.engine.history import read_history
from covidxr.engine.loop import CHECKPOINT_FORMAT, fit, make_fabric
from covidxr.errors import CovidxrError


class ScriptedSteps:
    """Steps whose monitored number is scripted per epoch; the training batches are real (a linear model)."""

    columns: tuple[str, ...] = ("epoch", "train_loss", "val_score", "seconds")

    def __init__(self, values: list[float], maximize: bool) -> None:
        self.values, self.maximize, self.monitor = values, maximize, "val_score"
        generator = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(32, 4, generator=generator), torch.randn(32, 1, generator=generator)
        self.epoch = -1

    def train_batches(self, epoch: int) -> list[torch.Tensor]:
        self.epoch = epoch
        return list(torch.randperm(32).split(8))

    def train_loss(self, net: nn.Module, index: torch.Tensor) -> torch.Tensor:
        return ((net(self.x[index]) - self.y[index]) ** 2).mean()

    def epoch_numbers(self, fabric: object, net: nn.Module) -> dict[str, float]:
        return {"train_loss": float(((net(self.x) - self.y) ** 2).mean()), "val_score": self.values[self.epoch]}


def _fit(folder: Path, values: list[float], maximize: bool = False, patience: int = 10) -> tuple[object, nn.Module]:
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    steps = ScriptedSteps(values, maximize)
    result = fit(make_fabric(), net, optimizer, steps, folder, epochs=len(values), patience=patience, seed=1)
    return result, net


def test_a_non_finite_number_stops_training_and_the_best_epoch_stays(tmp_path: Path) -> None:
    result, _ = _fit(tmp_path, [0.9, 0.5, math.nan, 0.1, 0.05])
    assert (result.halted, result.epochs_run, result.best_epoch, result.best_value) == (True, 3, 1, 0.5)
    assert [int(r["epoch"]) for r in read_history(tmp_path / "history.csv")] == [0, 1, 2]


def test_maximised_numbers_and_patience_count_epochs_without_a_strictly_better_one(tmp_path: Path) -> None:
    result, net = _fit(tmp_path / "dice", [0.2, 0.6, 0.6, 0.5, 0.9], maximize=True, patience=2)
    assert (result.halted, result.epochs_run, result.best_epoch, result.best_value) == (False, 4, 1, 0.6)
    assert not all(torch.equal(result.best_state[k], v) for k, v in net.state_dict().items())  # epoch 1's weights
    lowest, _ = _fit(tmp_path / "loss", [0.9, 0.4, 0.4, 0.3], patience=5)
    assert (lowest.best_epoch, lowest.best_value, lowest.epochs_run) == (3, 0.3, 4)


def test_a_finished_run_resumed_trains_no_further_and_keeps_its_best(tmp_path: Path) -> None:
    first, _ = _fit(tmp_path, [0.9, 0.5, 0.7])
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["format"] == CHECKPOINT_FORMAT and saved["progress"]["epoch"] == 2
    again, _ = _fit(tmp_path, [0.9, 0.5, 0.7])
    assert (again.best_epoch, again.epochs_run) == (first.best_epoch, first.epochs_run) == (1, 3)
    assert all(torch.equal(again.best_state[k], v) for k, v in first.best_state.items())


def test_a_checkpoint_of_another_format_is_refused_by_name(tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "epoch": 3, "optimizer_states": []}, tmp_path / "last.ckpt")  # Lightning's
    with pytest.raises(CovidxrError, match=r"last\.ckpt: written by an earlier covidxr's trainer"):
        _fit(tmp_path, [0.9, 0.5])


def test_a_device_setting_this_machine_cannot_use_is_one_clear_error() -> None:
    with pytest.raises(CovidxrError, match=r"accelerator 'quantum'.*invalid accelerator name"):
        make_fabric("quantum")
    if not torch.cuda.is_available():  # on a machine without a GPU, asking for one says so
        with pytest.raises(CovidxrError, match=r"accelerator 'gpu'"):
            make_fabric("gpu")


def test_without_nvml_torch_looks_for_cuda_its_own_way_not_through_nvml_at_every_adam_step() -> None:
    """Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1 when imported; where NVML cannot be loaded the engine takes
    it back (torch would try to load NVML at every Adam step), and leaves it where NVML is there."""
    import subprocess
    import sys

    code = (
        "import ctypes, os, lightning\n"
        "assert os.environ['PYTORCH_NVML_BASED_CUDA_CHECK'] == '1'\n"
        "import covidxr.engine.loop\n"
        "try:\n    ctypes.CDLL('libnvidia-ml.so.1'); expected = '1'\n"
        "except OSError:\n    expected = None\n"
        "print(os.environ.get('PYTORCH_NVML_BASED_CUDA_CHECK') == expected)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr
