"""Many heads of the study's shape trained as one: a grid's points that share cached features differ only in
their head's settings, and one 64-unit head is too small to keep a core busy — the framework around a step costs
more than its arithmetic. Stacking the heads' weights (first dimension: the trial) makes one step of every head
a few batched matrix products.

Each trial keeps its own learning rate, optimizer, dropout, weight decay, schedule and early stopping: its
optimizer is the one its own run would use (make_optimizer: PyTorch's, as timm builds it), a parameter group per
trial over its slice of the stacked weights — views, so the in-place steps update the stack and nothing is
copied. Trials of one batch size and optimizer step together on the loop's sample order, start from the
head a run of the same seed builds, and draw the dropout masks the loop draws (seeded per epoch as it seeds
them): a point trained here ends where its own run would. Each stack's state is written every few seconds, so a
killed search resumes where it stopped.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covidxr.engine.loop import epoch_seed
from covidxr.models.head import ClassifierHead, positive_scores
from covidxr.training.sampling import EpochSampler, once_per_item
from covidxr.training.steps import epoch_log, make_optimizer, per_sample_loss

SAVE_EVERY_S = 2.0
PLATEAU_FACTOR, PLATEAU_PATIENCE, PLATEAU_THRESHOLD = 0.5, 4, 1e-4  # torch's ReduceLROnPlateau as make_schedule
PLATEAU_EPS = 1e-8  # ReduceLROnPlateau's smallest change of rate worth making
NAMES = ("0.weight", "0.bias", "3.weight", "3.bias")  # ClassifierHead's parameters, in this order


@dataclass(frozen=True)
class HeadPoint:
    """One trial's head settings."""

    lr: float
    optimizer: str
    dropout: float
    batch_size: int
    weight_decay: float = 0.0
    momentum: float = 0.9
    plateau: bool = False


@dataclass
class HeadOutcome:
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    best_state: dict[str, torch.Tensor]  # a ClassifierHead state dict
    history: list[dict[str, float]]  # history.csv rows: epoch, train_*, val_*, seconds


def _masks(shape: tuple[int, int], p: float, seed: int, epoch: int, sizes: list[int]) -> list[torch.Tensor]:
    """The dropout multipliers a one-trial run draws in this epoch: its RNG is seeded as the loop seeds it
    (engine.loop.epoch_seed) and the head's forward draws nothing else."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(epoch_seed(seed, epoch))
    try:
        return [F.dropout(torch.ones(n, shape[1]), p, training=True) for n in sizes]
    finally:
        torch.random.set_rng_state(generator_state)


def _forward(params: list[torch.Tensor], x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """(G, B, C) logits of every head on one batch (B, D); `masks` (G, B, H) are the dropout multipliers. The
    first layer is one matrix product over all heads' units (G * H), whose gradient is one product too."""
    w1, b1, w2, b2 = params
    g, h, d = w1.shape
    hidden = (x @ w1.reshape(g * h, d).t()).view(len(x), g, h).transpose(0, 1)
    hidden = torch.relu(hidden + b1[:, None, :])
    if masks is not None:
        hidden = hidden * masks
    return torch.bmm(hidden, w2.transpose(1, 2)) + b2[:, None, :]


def train_heads(
    points: Sequence[HeadPoint],
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    task: str,
    num_outputs: int,
    hidden: int,
    epochs: int,
    patience: int,
    seed: int,
    balanced: bool = False,
    groups: Sequence[Hashable] | None = None,
    checkpoint_dir: Path | None = None,
    init: dict[str, torch.Tensor] | None = None,
) -> list[HeadOutcome]:
    """Every point's head trained to its own early stop; outcomes in the order of `points`. Every head starts
    from `init` (a ClassifierHead state: the head a run of this seed builds), else from one seeded here."""
    outcomes: dict[int, HeadOutcome] = {}
    stacks: dict[tuple[int, str], list[int]] = {}  # one stack per batch size and optimizer
    for i, p in enumerate(points):
        stacks.setdefault((p.batch_size, p.optimizer), []).append(i)
    for (batch_size, optimizer), members in sorted(stacks.items()):
        last = checkpoint_dir / f"heads-batch{batch_size}-{optimizer}.pt" if checkpoint_dir else None
        shared = _Shared(train, val, task, num_outputs, hidden, seed)
        group = _Group([points[i] for i in members], shared, last, init)
        done = group.fit(epochs, patience, EpochSampler(train[1].tolist(), seed, balanced, rank=0, world=1,
                                                        groups=groups))  # fmt: skip
        outcomes.update(zip(members, done, strict=True))
    return [outcomes[i] for i in range(len(points))]


@dataclass(frozen=True)
class _Shared:
    """What every trial of a grid trains on and how: the features, the task, the head's shape, the seed."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    task: str
    num_outputs: int
    hidden: int
    seed: int


class _Group:
    """Trials of one batch size and optimizer: stacked weights, optimizer, schedule and early-stopping state."""

    def __init__(
        self, points: list[HeadPoint], shared: _Shared, last: Path | None, init: dict[str, torch.Tensor] | None
    ) -> None:
        self.points, self.train, self.val, self.task = points, shared.train, shared.val, shared.task
        self.seed, self.last = shared.seed, last
        g = len(points)
        if init is None:
            torch.manual_seed(shared.seed)
            width = shared.train[0].shape[1]
            init = dict(ClassifierHead(width, shared.num_outputs, shared.hidden, 0.0).state_dict())
        self.stacks = [init[n].detach().unsqueeze(0).repeat(g, *([1] * init[n].dim())) for n in NAMES]
        self.trial_params = [nn.ParameterList([stack[i] for stack in self.stacks]) for i in range(g)]  # views
        groups = [{"params": list(params), "lr": p.lr, "weight_decay": p.weight_decay}
                  | ({"momentum": p.momentum} if p.optimizer in ("sgd", "rmsprop") else {})
                  for params, p in zip(self.trial_params, points, strict=True)]  # fmt: skip
        first = points[0]
        self.optimizer = make_optimizer(groups, first.optimizer, first.lr, first.weight_decay, first.momentum)
        self.active = torch.ones(g, dtype=torch.bool)
        self.best_loss = torch.full((g,), math.inf, dtype=torch.float64)
        self.plateau_best = torch.full((g,), math.inf, dtype=torch.float64)
        self.plateau_bad = torch.zeros(g, dtype=torch.long)
        self.wait = torch.zeros(g, dtype=torch.long)
        self.best_epoch = torch.full((g,), -1, dtype=torch.long)
        self.epochs_run = torch.zeros(g, dtype=torch.long)
        self.best = [stack.clone() for stack in self.stacks]
        self.history: list[list[dict[str, float]]] = [[] for _ in range(g)]
        self.epoch = 0

    def _save(self) -> None:
        if self.last is None:
            return
        state = {
            "epoch": self.epoch, "stacks": self.stacks, "optimizer": self.optimizer.state_dict(),
            "active": self.active, "best_loss": self.best_loss, "plateau_best": self.plateau_best,
            "plateau_bad": self.plateau_bad, "wait": self.wait, "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run, "best": self.best, "history": self.history,
        }  # fmt: skip
        self.last.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.last.with_name(f".{self.last.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.last)

    def _resume(self) -> None:
        if self.last is None or not self.last.is_file():
            return
        saved = torch.load(self.last, map_location="cpu", weights_only=True)
        for stack, value in zip(self.stacks, saved["stacks"], strict=True):
            stack.copy_(value)  # in place: the trials' parameters are views of the stacks
        self.optimizer.load_state_dict(saved["optimizer"])
        for name in ("epoch", "active", "best_loss", "plateau_best", "plateau_bad", "wait", "best_epoch",
                     "epochs_run", "best", "history"):  # fmt: skip
            setattr(self, name, saved[name])

    def fit(self, epochs: int, patience: int, sampler: EpochSampler) -> list[HeadOutcome]:
        self._resume()
        x_train, y_train = self.train
        x_val, y_val = self.val
        batch_size = self.points[0].batch_size
        rates = sorted({p.dropout for p in self.points})
        hidden = self.stacks[0].shape[1]
        which = torch.tensor([rates.index(p.dropout) for p in self.points])
        saved_at = time.monotonic()
        while self.epoch < epochs and bool(self.active.any()):
            began = time.perf_counter()
            sampler.set_epoch(self.epoch)
            order = torch.tensor(list(sampler), dtype=torch.long)
            batches = list(order.split(batch_size))
            sizes = [len(b) for b in batches]
            masks = [_masks((0, hidden), p, self.seed, self.epoch, sizes) for p in rates]
            seen_logits = []
            for k, batch in enumerate(batches):
                x, y = x_train[batch], y_train[batch]
                seen_logits.append(self._step(x, y, torch.stack([m[k] for m in masks])[which]))
            with torch.no_grad():
                val_logits = _forward(self.stacks, x_val, None)
            self._end_epoch(torch.cat(seen_logits, dim=1), order, y_train, val_logits, y_val, patience, began)
            self.epoch += 1
            if time.monotonic() - saved_at > SAVE_EVERY_S:
                self._save()
                saved_at = time.monotonic()
        self._save()
        return [self._outcome(g) for g in range(len(self.points))]

    def _step(self, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """One batch for every trial: one batched forward and backward, each trial's slice of the gradient given
        to its parameter group, one optimizer step."""
        leaves = [stack.detach().requires_grad_(True) for stack in self.stacks]  # the stacks, not copies
        logits = _forward(leaves, x, masks)
        losses = per_sample_loss(logits.reshape(-1, logits.shape[-1]), y.repeat(len(self.points)), self.task)
        (losses.view(len(self.points), -1).mean(dim=1) * self.active).sum().backward()
        for g, params in enumerate(self.trial_params):
            for param, leaf in zip(params, leaves, strict=True):
                param.grad = leaf.grad[g] if leaf.grad is not None else None
        self.optimizer.step()
        return logits.detach()

    def _outcome(self, g: int) -> HeadOutcome:
        state = {n: self.best[k][g].clone() for k, n in enumerate(NAMES)}
        return HeadOutcome(int(self.best_epoch[g]), float(self.best_loss[g]), int(self.epochs_run[g]), state,
                           self.history[g])  # fmt: skip

    def _end_epoch(
        self, train_logits: torch.Tensor, order: torch.Tensor, y_train: torch.Tensor, val_logits: torch.Tensor,
        y_val: torch.Tensor, patience: int, began: float,
    ) -> None:  # fmt: skip
        seconds = (time.perf_counter() - began) / max(int(self.active.sum()), 1)
        targets = y_train[order].numpy()
        for g in self.active.nonzero().flatten().tolist():
            scores = positive_scores(train_logits[g], self.task).numpy()
            losses = per_sample_loss(train_logits[g], y_train[order], self.task).numpy()
            item_scores, item_targets, item_losses = once_per_item(order.numpy(), scores, targets, losses)
            logged = {f"train_{k}": v for k, v in epoch_log(item_scores, item_targets, item_losses, self.task).items()}
            val_scores = positive_scores(val_logits[g], self.task).numpy()
            val_losses = per_sample_loss(val_logits[g], y_val, self.task).numpy()
            logged |= {f"val_{k}": v for k, v in epoch_log(val_scores, y_val.numpy(), val_losses, self.task).items()}
            loss = logged["val_loss"]
            self.history[g].append({"epoch": float(self.epoch), **logged, "seconds": seconds})
            self.epochs_run[g] = self.epoch + 1
            if not np.isfinite(loss):  # diverged: stop here, keep the best epoch so far
                self.active[g] = False
                continue
            if loss < self.best_loss[g]:
                self.best_loss[g], self.best_epoch[g], self.wait[g] = loss, self.epoch, 0
                for k, stack in enumerate(self.stacks):
                    self.best[k][g] = stack[g]
            else:
                self.wait[g] += 1
            if self.points[g].plateau:
                self._plateau(g, loss)
            if self.wait[g] >= patience:
                self.active[g] = False

    def _plateau(self, g: int, loss: float) -> None:
        """torch's ReduceLROnPlateau (mode min, relative threshold), as make_schedule sets it, for one trial."""
        if loss < self.plateau_best[g] * (1 - PLATEAU_THRESHOLD):
            self.plateau_best[g], self.plateau_bad[g] = loss, 0
        else:
            self.plateau_bad[g] += 1
        if self.plateau_bad[g] > PLATEAU_PATIENCE:
            group = self.optimizer.param_groups[g]
            if group["lr"] * (1 - PLATEAU_FACTOR) > PLATEAU_EPS:
                group["lr"] *= PLATEAU_FACTOR
            self.plateau_bad[g] = 0
