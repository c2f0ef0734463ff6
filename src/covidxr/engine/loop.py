"""The one training loop, for every mode: the head on cached features, the tail on the cached trunk, the whole
network on images, the lungs' segmenter; one process or many, on Lightning Fabric (its strategies, precision,
collectives and checkpoint I/O).

What a mode trains on and how it scores an epoch are its `Steps`; everything else is here, once: the per-epoch
seeding rule, early stopping on the mode's monitored number with a guard that stops on a non-finite one, the
plateau schedule, the best epoch's weights, history.csv (rank 0 writes), and `last.ckpt` — one format, tensors
and numbers only — written at most every few seconds and on the way out, so a killed run (even kill -9) resumes
and ends as if it had never stopped.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from covidxr.engine.history import write_history_row
from covidxr.errors import CovidxrError
from covidxr.progress import progress
from covidxr.rundir import RunDir

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"  # Lightning sets it to 1 when imported


def _plain_cuda_check_without_nvml() -> None:
    """Lightning asks torch to look for CUDA through NVML (fork-safe); where NVML cannot be loaded, torch tries
    to load it again at every look, and every Adam step looks (0.23 ms a step on a CPU; a cached head's whole
    step is about 0.6 ms). Without NVML there is no driver whose state a fork could inherit: torch's own check
    is used."""
    import ctypes

    if os.environ.get(NVML_CHECK) != "1":
        return
    try:
        ctypes.CDLL("libnvidia-ml.so.1")  # what torch loads for the look
    except OSError:
        del os.environ[NVML_CHECK]


_plain_cuda_check_without_nvml()
CHECKPOINT_FORMAT = "covidxr-loop/1"  # the one last.ckpt format (a file without it: an older covidxr's trainer)
SAVE_EVERY_S = 2.0  # seconds between last.ckpt writes: a kill loses at most that much work


class Steps(Protocol):
    """A mode's part of the loop: its training batches and loss, and the numbers an epoch ends with."""

    monitor: str  # the logged number early stopping, the best epoch and the schedule follow
    maximize: bool  # True: higher is better (Dice); False: lower (a loss)
    columns: tuple[str, ...]  # history.csv's columns: epoch, the logged numbers, seconds

    def train_batches(self, epoch: int) -> Iterable[Any]: ...

    def train_loss(self, net: nn.Module, batch: Any) -> torch.Tensor: ...

    def epoch_numbers(self, fabric: L.Fabric, net: nn.Module) -> dict[str, float]: ...


@dataclass(frozen=True)
class Progress:
    """Where a run stands after its last finished epoch; saved in last.ckpt."""

    epoch: int = -1
    best: float = math.nan  # the best monitored value so far (NaN: none yet)
    best_epoch: int = -1
    wait: int = 0  # epochs since the best one
    halted: bool = False  # the monitored number was not finite: training stopped there


@dataclass
class LoopResult:
    best_epoch: int
    best_value: float
    epochs_run: int
    halted: bool
    best_state: dict[str, torch.Tensor]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file and rename, so a kill -9 never leaves a half-written checkpoint; read back
    tensors and plain data only (`weights_only=True`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def make_fabric(
    accelerator: str = "cpu", devices: int | str = 1, strategy: str = "auto", num_nodes: int = 1,
    precision: str = "32-true",
) -> L.Fabric:  # fmt: skip
    """Fabric with the atomic, tensors-only checkpoint I/O; launched (helper processes of a distributed run are
    started here, re-running the same command)."""
    fabric = unlaunched_fabric(accelerator, devices, strategy, num_nodes, precision)
    fabric.launch()
    return fabric


def unlaunched_fabric(
    accelerator: str = "cpu", devices: int | str = 1, strategy: str = "auto", num_nodes: int = 1,
    precision: str = "32-true",
) -> L.Fabric:  # fmt: skip
    """Fabric set up but not launched: also how a run checks its device settings before any data work."""
    try:
        return L.Fabric(
            accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
            precision=precision, plugins=[AtomicCheckpointIO()],  # type: ignore[arg-type]
        )  # fmt: skip
    except (ValueError, RuntimeError) as exc:  # an unknown name, or a device this machine lacks
        raise CovidxrError(
            f"cannot train with accelerator {accelerator!r}, devices {devices!r}, strategy {strategy!r}, precision "
            f"{precision!r}: {exc}"
        ) from None


def epoch_seed(seed: int, epoch: int) -> int:
    """The one seeding rule: an epoch's RNGs start from (seed, epoch) alone."""
    return seed * 10_007 + epoch


def seed_epoch(seed: int, epoch: int) -> None:
    """Every RNG seeded by the rule at each epoch's start, so an epoch draws the same dropout masks and
    augmentations however the run got there (straight, or resumed after a kill)."""
    L.seed_everything(epoch_seed(seed, epoch), workers=True, verbose=False)


def is_better(value: float, best: float, maximize: bool) -> bool:
    """Strictly better (as Lightning's checkpoint and early stopping judge it); anything beats no value yet."""
    return math.isnan(best) or (value > best if maximize else value < best)


def fit(
    fabric: L.Fabric,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: Steps,
    folder: Path,
    *,
    epochs: int,
    patience: int,
    seed: int,
    schedule: Any = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> LoopResult:
    """Train `net` (the trainable part) with `optimizer` until `epochs`, `patience` epochs without a better
    monitored number, or a non-finite one; resumes from `folder`/last.ckpt. `schedule` (ReduceLROnPlateau) steps on
    the monitored number; `on_epoch(epoch, value)` sees every epoch and may stop the run by raising (a pruner).
    Returns the best epoch's state of `net`."""
    model, opt = fabric.setup(net, optimizer)
    folder.mkdir(parents=True, exist_ok=True)
    last = folder / RunDir.last_ckpt
    state, best_state = Progress(), copy.deepcopy(net.state_dict())
    if last.is_file():
        state, best_state = _resume(fabric, last, model, opt, schedule)
    saved_at = time.monotonic()
    with progress(epochs, "training", "epoch") if fabric.is_global_zero else nullcontext(_NoBar()) as bar:
        bar.update(state.epoch + 1)
        while state.epoch + 1 < epochs and state.wait < patience and not state.halted:
            epoch, started = state.epoch + 1, time.perf_counter()
            seed_epoch(seed, epoch)
            model.train()
            for batch in steps.train_batches(epoch):
                loss = steps.train_loss(model, batch)
                opt.zero_grad(set_to_none=True)
                fabric.backward(loss)
                opt.step()
            model.eval()
            with torch.no_grad():
                logged = steps.epoch_numbers(fabric, model)
            value = logged[steps.monitor]
            state = _after(state, epoch, value, steps.maximize)
            if state.best_epoch == epoch:
                best_state = copy.deepcopy(net.state_dict())
            if schedule is not None and not state.halted:
                schedule.step(value)
            if fabric.is_global_zero:
                write_history_row(folder / RunDir.history, epoch, logged, time.perf_counter() - started, steps.columns)
            if fabric.broadcast(time.monotonic() - saved_at > SAVE_EVERY_S):  # every rank saves, or none does
                _save(fabric, last, model, opt, schedule, state, best_state)
                saved_at = time.monotonic()
            bar.update(1)
            if on_epoch is not None:
                on_epoch(epoch, value)
    _save(fabric, last, model, opt, schedule, state, best_state)
    return LoopResult(state.best_epoch, state.best, state.epoch + 1, state.halted, best_state)


def _after(state: Progress, epoch: int, value: float, maximize: bool) -> Progress:
    if not math.isfinite(value):
        return replace(state, epoch=epoch, halted=True)
    if is_better(value, state.best, maximize):
        return replace(state, epoch=epoch, best=value, best_epoch=epoch, wait=0)
    return replace(state, epoch=epoch, wait=state.wait + 1)


def _save(
    fabric: L.Fabric, path: Path, model: nn.Module, opt: Any, schedule: Any, state: Progress,
    best_state: dict[str, torch.Tensor],
) -> None:  # fmt: skip
    checkpoint: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "model": model, "optimizer": opt}
    checkpoint |= {"progress": asdict(state), "best_state": best_state}
    fabric.save(path, checkpoint | ({"schedule": schedule} if schedule is not None else {}))


def _resume(
    fabric: L.Fabric, path: Path, model: nn.Module, opt: Any, schedule: Any
) -> tuple[Progress, dict[str, torch.Tensor]]:
    objects = {"model": model, "optimizer": opt} | ({"schedule": schedule} if schedule is not None else {})
    saved = fabric.load(path, objects, strict=False)  # tensors and numbers only (AtomicCheckpointIO); the rest back
    if saved.get("format") != CHECKPOINT_FORMAT:  # nothing was restored: an older file has none of those keys
        raise CovidxrError(
            f"{path}: written by an earlier covidxr's trainer, which this one cannot continue; train again into a "
            "new --out"
        )
    return Progress(**saved["progress"]), saved["best_state"]


class _NoBar:
    """Helper ranks of a distributed run show no progress: rank 0 speaks for the run."""

    def update(self, n: int = 1) -> None:
        pass
