"""Training on cached features at the speed of the arithmetic: a plain PyTorch loop over in-memory tensors.

With features cached, a step of a 64-unit head costs microseconds and the framework around it (data loader,
hooks, callbacks, a checkpoint file per epoch) costs milliseconds. This loop does what the Lightning path does
for one process — the same sampler order, per-epoch reseeding, optimizer, plateau schedule, early stopping on
validation loss, best-epoch weights, history.csv rows and epoch metrics — without the per-step machinery. It
writes `last.ckpt` (its own state, tensors only) every few epochs and on the way out, so a killed run resumes.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from covidxr.config import TrainConfig
from covidxr.models.head import positive_scores
from covidxr.rundir import RunDir
from covidxr.training.callbacks import write_history_row
from covidxr.training.module import classification_loss, epoch_log, make_optimizer, make_schedule, per_sample_loss
from covidxr.training.sampling import EpochSampler, is_balanced, once_per_item

LOOP_KEY = "head_loop"  # marks a last.ckpt written by this loop (a Lightning one resumes through Lightning)
SAVE_EVERY_S = 2.0  # seconds between last.ckpt writes: a kill loses at most that much work
SMALL_ROW = 8192  # features per item up to which a step runs on one thread (pooled features: 1280)


@dataclass
class LoopResult:
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    best_state: dict[str, torch.Tensor]


@contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_loop_checkpoint(path: Path) -> bool:
    return path.is_file() and LOOP_KEY in torch.load(path, map_location="cpu", weights_only=True)


def fit_on_tensors(
    net: nn.Module,
    task: str,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    tc: TrainConfig,
    seed: int,
    class_weights: torch.Tensor | None,
    run_dir: Path,
    last: Path,
    on_epoch: Callable[[int, float], None] | None = None,
    groups: Sequence[Hashable] | None = None,
) -> LoopResult:
    """Train `net` on (features, targets) tensors until early stopping or `tc.epochs`; resumes from `last`.
    `groups` (one per training row) are what a source-balanced draw evens out.
    Pooled features make steps too small to split across threads (splitting only adds synchronisation), so
    those run on one thread."""
    with _threads(1 if train[0][0].numel() <= SMALL_ROW else torch.get_num_threads()):
        x_train, y_train = train
        x_val, y_val = val
        optimizer = make_optimizer(net, tc.optimizer, tc.lr, tc.weight_decay, tc.momentum)  # type: ignore[arg-type]
        schedule = make_schedule(optimizer, tc.lr_schedule)  # type: ignore[arg-type]
        sampler = EpochSampler(y_train.tolist(), seed, is_balanced(tc.balance), rank=0, world=1, groups=groups)
        best_loss, best_epoch, best_state, wait, start_epoch = math.inf, -1, copy.deepcopy(net.state_dict()), 0, 0
        if last.is_file():
            saved = torch.load(last, map_location="cpu", weights_only=True)
            net.load_state_dict(saved["state_dict"])
            optimizer.load_state_dict(saved["optimizer"])
            if schedule is not None and saved["schedule"] is not None:
                schedule.load_state_dict(saved["schedule"])
            best_loss, best_epoch, best_state = saved["best_val_loss"], saved["best_epoch"], saved["best_state"]
            wait, start_epoch = saved["wait"], saved["epoch"] + 1
        saved_at = time.monotonic()
        epoch = start_epoch - 1
        while epoch + 1 < tc.epochs and wait < tc.patience:  # type: ignore[operator]
            epoch += 1
            started = time.perf_counter()
            L.seed_everything(seed * 10_007 + epoch, workers=True, verbose=False)  # as EpochSeed: same dropout masks
            sampler.set_epoch(epoch)
            order = torch.tensor(list(sampler), dtype=torch.long)
            net.train()
            seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []
            for batch in order.split(tc.batch_size):
                x, y = x_train[batch], y_train[batch]
                logits = net(x)
                loss = classification_loss(logits, y, task, class_weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                detached = logits.detach()
                seen.append((positive_scores(detached, task), y, per_sample_loss(detached, y, task), batch))
            net.eval()
            with torch.no_grad():
                val_logits = net(x_val)
            logged = {f"train_{k}": v for k, v in epoch_log(*_unique_items(seen), task).items()}
            val_scores = positive_scores(val_logits, task).numpy()
            val_losses = per_sample_loss(val_logits, y_val, task).numpy()
            logged |= {f"val_{k}": v for k, v in epoch_log(val_scores, y_val.numpy(), val_losses, task).items()}
            val_loss = logged["val_loss"]
            if val_loss < best_loss:  # strictly better, as Lightning's checkpoint and early stopping judge it
                best_loss, best_epoch, best_state, wait = val_loss, epoch, copy.deepcopy(net.state_dict()), 0
            else:
                wait += 1
            if schedule is not None:
                schedule.step(val_loss)
            write_history_row(run_dir / RunDir.history, epoch, logged, time.perf_counter() - started)
            if time.monotonic() - saved_at > SAVE_EVERY_S:
                _save(last, net, optimizer, schedule, epoch, best_loss, best_epoch, best_state, wait)
                saved_at = time.monotonic()
            if on_epoch is not None:
                on_epoch(epoch, val_loss)
        _save(last, net, optimizer, schedule, epoch, best_loss, best_epoch, best_state, wait)
        return LoopResult(best_epoch, best_loss, epoch + 1, best_state)


def _unique_items(
    seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, targets and losses once per item, in item order (a balanced draw repeats items)."""
    scores, targets, losses, index = (torch.cat([s[k] for s in seen]).numpy() for k in range(4))
    return once_per_item(index, scores, targets, losses)  # type: ignore[return-value]


def _save(
    path: Path,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Any,
    epoch: int,
    best_loss: float,
    best_epoch: int,
    best_state: dict[str, torch.Tensor],
    wait: int,
) -> None:
    state = {
        LOOP_KEY: True,
        "epoch": epoch,
        "state_dict": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict() if schedule is not None else None,
        "best_val_loss": best_loss,
        "best_epoch": best_epoch,
        "best_state": best_state,
        "wait": wait,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
