"""Many heads of the study's shape trained as one: a grid's points that share cached features differ only in
their head's settings, and one 64-unit head is too small to keep a core busy — the framework around a step costs
more than its arithmetic. Stacking the heads' weights (first dimension: the trial) makes one step of every head
a few batched matrix products.

Each trial keeps its own learning rate, optimizer, dropout, weight decay, schedule and early stopping: its
optimizer is the one its own run would use (make_optimizer: PyTorch's, as timm builds it), a parameter group per
run of trials with the same settings over their slice of the stacked weights — views, so the in-place steps
update the stack and nothing is copied. Trials of one batch size step together on the loop's sample order (one
gradient computation, then each kind of optimizer's step), start from the
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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covidxr.engine.loop import epoch_seed
from covidxr.models.head import ClassifierHead, positive_scores
from covidxr.training.sampling import EpochSampler, once_per_item
from covidxr.training.steps import epoch_log, make_optimizer, num_threads, per_sample_loss, step_threads

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
    """(G, B, C) logits of every head on one batch (B, D); `masks` (G, B, H) are the dropout multipliers."""
    return _layers(params, x, masks)[-1]


def _layers(
    params: list[torch.Tensor], x: torch.Tensor, masks: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every head's pre-activations and hidden units (G, B, H) and logits (G, B, C). The first layer is one
    matrix product over all heads' units (G * H)."""
    w1, b1, w2, b2 = params
    g, h, d = w1.shape
    pre = (x @ w1.view(g * h, d).t()).view(len(x), g, h).transpose(0, 1) + b1[:, None, :]
    hidden = pre.relu()
    if masks is not None:
        hidden = hidden * masks
    return pre, hidden, torch.baddbmm(b2[:, None, :], hidden, w2.transpose(1, 2))


def _gradients(
    params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, task: str,
    scale: torch.Tensor, grads: list[torch.Tensor],
) -> torch.Tensor:  # fmt: skip
    """Every head's step on one batch, written into `grads`: the gradient of each head's mean loss
    (training.steps.per_sample_loss) times `scale` (G,), and the logits. Written out — the two layers' chain
    rule is five products — because autograd's bookkeeping over a graph of tiny tensors cost more than the
    arithmetic (0.66 vs 0.41 ms for six heads); held to autograd by the tests."""
    w1, _, w2, _ = params
    g, h, d = w1.shape
    pre, hidden, logits = _layers(params, x, masks)
    onehot = F.one_hot(y, logits.shape[-1]).to(logits.dtype)
    if task == "binary":  # mean BCE over the sigmoid outputs
        dlogits = (logits.sigmoid() - onehot).mul_((scale / (len(x) * logits.shape[-1]))[:, None, None])
    else:  # softmax cross-entropy
        dlogits = (logits.softmax(dim=-1) - onehot).mul_((scale / len(x))[:, None, None])
    torch.bmm(dlogits.transpose(1, 2), hidden, out=grads[2])
    torch.sum(dlogits, dim=1, out=grads[3])
    dpre = torch.bmm(dlogits, w2).mul_(masks).mul_(pre > 0)
    torch.sum(dpre, dim=1, out=grads[1])
    torch.mm(dpre.transpose(0, 1).reshape(len(x), g * h).t(), x, out=grads[0].view(g * h, d))
    return logits


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
    if init is None:
        torch.manual_seed(seed)
        init = dict(ClassifierHead(train[0].shape[1], num_outputs, hidden, 0.0).state_dict())
    stacks: dict[int, list[int]] = {}  # one stack per batch size
    for i, p in sorted(enumerate(points), key=lambda item: _settings(item[1])):  # equal settings side by side
        stacks.setdefault(p.batch_size, []).append(i)
    shared = _Shared(train, val, task, seed)
    outcomes: dict[int, HeadOutcome] = {}
    with num_threads(step_threads(train[0].shape[1])):
        for batch_size, members in sorted(stacks.items()):
            last = checkpoint_dir / f"heads-batch{batch_size}.pt" if checkpoint_dir else None
            group = _Group([points[i] for i in members], shared, last, init)
            sampler = EpochSampler(train[1].tolist(), seed, balanced, rank=0, world=1, groups=groups)
            outcomes.update(zip(members, group.fit(epochs, patience, sampler), strict=True))
    return [outcomes[i] for i in range(len(points))]


def _runs(points: list[HeadPoint]) -> list[tuple[int, int]]:
    """(start, stop) of each run of neighbouring trials an optimizer can step as one parameter group (the same
    optimizer, rate, decay and momentum, no schedule of their own): torch.optim's Python per group per step
    cost more than a 64-unit head's update (an Adam step of six heads: 0.81 ms as six groups, 0.59 as three)."""
    runs: list[tuple[int, int]] = []
    for i, p in enumerate(points):
        if runs and not (p.plateau or points[i - 1].plateau) and _settings(p) == _settings(points[i - 1]):
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def _settings(p: HeadPoint) -> tuple[str, float, float, float]:
    return p.optimizer, p.lr, p.weight_decay, p.momentum


@dataclass(frozen=True)
class _Shared:
    """What every trial of a grid trains on and how: the features, the task, the seed (the head's shape is the
    initial head's)."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    task: str
    seed: int


class _Group:
    """Trials of one batch size: stacked weights, their optimizers (one per kind, a parameter group per run of
    trials with the same settings), schedule and early-stopping state."""

    def __init__(
        self, points: list[HeadPoint], shared: _Shared, last: Path | None, init: dict[str, torch.Tensor]
    ) -> None:
        self.points, self.train, self.val, self.task = points, shared.train, shared.val, shared.task
        self.seed, self.last = shared.seed, last
        g = len(points)
        self.stacks = [init[n].detach().unsqueeze(0).repeat(g, *([1] * init[n].dim())) for n in NAMES]
        self.grads = [torch.zeros_like(stack) for stack in self.stacks]  # each step writes every trial's here
        self.group_of: list[tuple[int, int]] = []  # each trial's optimizer and parameter group
        groups: dict[str, list[dict[str, Any]]] = {}  # per optimizer
        for lo, hi in _runs(points):  # trials lo..hi-1 share their settings: one group over their slices (views)
            params = [nn.Parameter(stack[lo:hi]) for stack in self.stacks]
            for param, grad in zip(params, self.grads, strict=True):
                param.grad = grad[lo:hi]  # views: the optimizer reads the trials' slice of each step's gradient
            p = points[lo]
            kind = groups.setdefault(p.optimizer, [])
            kind.append({"params": params, "lr": p.lr, "weight_decay": p.weight_decay}
                        | ({"momentum": p.momentum} if p.optimizer in ("sgd", "rmsprop") else {}))  # fmt: skip
            self.group_of += [(list(groups).index(p.optimizer), len(kind) - 1)] * (hi - lo)
        self.optimizers = [make_optimizer(kind, name, kind[0]["lr"], kind[0]["weight_decay"],
                                          kind[0].get("momentum", 0.0)) for name, kind in groups.items()]  # fmt: skip
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
            "epoch": self.epoch, "stacks": self.stacks, "optimizers": [o.state_dict() for o in self.optimizers],
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
        for optimizer, state in zip(self.optimizers, saved["optimizers"], strict=True):
            optimizer.load_state_dict(state)
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
        """One batch for every trial: every head's gradient at once (a stopped trial's is zero), one optimizer
        step."""
        logits = _gradients(self.stacks, x, y, masks, self.task, self.active.to(x.dtype), self.grads)
        for optimizer in self.optimizers:
            optimizer.step()
        return logits

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
            kind, index = self.group_of[g]
            group = self.optimizers[kind].param_groups[index]  # its own: a scheduled trial is alone in it
            if group["lr"] * (1 - PLATEAU_FACTOR) > PLATEAU_EPS:
                group["lr"] *= PLATEAU_FACTOR
            self.plateau_bad[g] = 0
