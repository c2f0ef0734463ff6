"""Many heads of the study's shape trained as one: a grid's points that share cached features differ only in
their head's settings, and one 64-unit head is too small to keep a core busy — the framework around a step costs
more than its arithmetic. Stacking the heads' weights (first dimension: the trial) makes one step of every head
a few batched matrix products.

Each trial keeps its own learning rate, optimizer (PyTorch's Adam, AdamW, heavy-ball SGD or RMSprop, stepped
here with its exact formulas on the stacked tensors), dropout, weight decay, schedule and early stopping. Trials
of one batch size step together on the head loop's sample order, start from the head a run of the same seed
builds, and draw the dropout masks the head loop draws (seeded per epoch as it seeds them): a point trained
here ends where its own run would. `last.pt` is written every
few seconds, so a killed search resumes where it stopped.
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

from covidxr.models.head import ClassifierHead, positive_scores
from covidxr.training.module import epoch_log, per_sample_loss
from covidxr.training.sampling import EpochSampler, once_per_item

SAVE_EVERY_S = 2.0
PLATEAU_FACTOR, PLATEAU_PATIENCE, PLATEAU_THRESHOLD = 0.5, 4, 1e-4  # torch's ReduceLROnPlateau as make_schedule
BETAS, EPS, RMS_ALPHA = (0.9, 0.999), 1e-8, 0.99
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


class StackedOptimizer:
    """PyTorch's optimizers on stacked parameters (first dimension: the trial), each trial with its own kind,
    learning rate, weight decay and momentum; only the `active` trials step."""

    def __init__(self, params: list[torch.Tensor], points: Sequence[HeadPoint]) -> None:
        self.params = params
        self.kinds = [p.optimizer for p in points]
        self.lr = torch.tensor([p.lr for p in points], dtype=torch.float64)
        self.wd = torch.tensor([p.weight_decay for p in points], dtype=torch.float64)
        self.momentum = torch.tensor([p.momentum for p in points], dtype=torch.float64)
        self.steps = torch.zeros(len(points), dtype=torch.long)
        self.state = {name: [torch.zeros_like(p) for p in params] for name in ("m", "v", "buf")}
        self.has_buf = torch.zeros(len(points), dtype=torch.bool)

    def _index(self, kind: str, active: torch.Tensor) -> torch.Tensor:
        chosen = torch.tensor([k == kind for k in self.kinds]) & active
        return chosen.nonzero().flatten()

    @staticmethod
    def _shape(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        self.steps += active.long()
        for kind in set(self.kinds):
            idx = self._index(kind, active)
            if len(idx) == 0:
                continue
            lr, wd, mom, steps = self.lr[idx], self.wd[idx], self.momentum[idx], self.steps[idx]
            first = ~self.has_buf[idx]
            for k, p in enumerate(self.params):
                assert p.grad is not None
                param, grad = p[idx], p.grad[idx]
                s = {name: state[k][idx] for name, state in self.state.items()}
                if kind == "adamw":
                    param = param * (1 - self._shape(lr * wd, param))
                else:
                    grad = grad + self._shape(wd, param) * param
                if kind in ("adam", "adamw"):
                    b1, b2 = BETAS
                    s["m"] = s["m"].lerp(grad, 1 - b1)
                    s["v"] = s["v"] * b2 + (1 - b2) * grad * grad
                    c1 = 1 - b1 ** steps.to(torch.float64)
                    c2 = 1 - b2 ** steps.to(torch.float64)
                    denom = s["v"].sqrt() / self._shape(c2.sqrt(), param) + EPS
                    param = param - self._shape(lr / c1, param) * s["m"] / denom
                elif kind == "sgd":
                    buf = torch.where(self._shape(first, param).bool(), grad, self._shape(mom, param) * s["buf"] + grad)
                    s["buf"] = buf
                    param = param - self._shape(lr, param) * buf
                elif kind == "rmsprop":
                    s["v"] = s["v"] * RMS_ALPHA + (1 - RMS_ALPHA) * grad * grad
                    step = grad / (s["v"].sqrt() + EPS)
                    s["buf"] = self._shape(mom, param) * s["buf"] + step
                    param = param - self._shape(lr, param) * s["buf"]
                else:
                    raise ValueError(f"unknown optimizer {kind!r}")
                p.index_copy_(0, idx, param)
                for name, value in s.items():
                    self.state[name][k].index_copy_(0, idx, value)
            self.has_buf[idx] = True

    def state_dict(self) -> dict[str, object]:
        return {"lr": self.lr, "steps": self.steps, "has_buf": self.has_buf, "state": self.state}

    def load_state_dict(self, saved: dict[str, object]) -> None:
        self.lr, self.steps, self.has_buf = saved["lr"], saved["steps"], saved["has_buf"]  # type: ignore[assignment]
        self.state = saved["state"]  # type: ignore[assignment]


def _masks(shape: tuple[int, int], p: float, seed: int, epoch: int, sizes: list[int]) -> list[torch.Tensor]:
    """The dropout multipliers a one-trial run draws in this epoch: its RNG is seeded as the head loop seeds it
    (seed * 10_007 + epoch) and the head's forward draws nothing else."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed * 10_007 + epoch)
    try:
        return [F.dropout(torch.ones(n, shape[1]), p, training=True) for n in sizes]
    finally:
        torch.random.set_rng_state(generator_state)


def _forward(params: list[torch.Tensor], x: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
    """(G, B, C) logits of every head on one batch (B, D); `masks` (G, B, H) are the dropout multipliers."""
    w1, b1, w2, b2 = params
    hidden = torch.relu(torch.einsum("bd,ghd->gbh", x, w1) + b1[:, None, :])
    if masks is not None:
        hidden = hidden * masks
    return torch.einsum("gbh,gch->gbc", hidden, w2) + b2[:, None, :]


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
    by_batch: dict[int, list[int]] = {}
    for i, p in enumerate(points):
        by_batch.setdefault(p.batch_size, []).append(i)
    for batch_size, members in sorted(by_batch.items()):
        last = checkpoint_dir / f"heads-batch{batch_size}.pt" if checkpoint_dir else None
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
    """Trials of one batch size: stacked weights, optimizer, schedule and early-stopping state."""

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
        start = init
        self.params = [start[n].detach().unsqueeze(0).repeat(g, *([1] * start[n].dim())) for n in NAMES]
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = StackedOptimizer(self.params, points)
        self.active = torch.ones(g, dtype=torch.bool)
        self.best_loss = torch.full((g,), math.inf, dtype=torch.float64)
        self.plateau_best = torch.full((g,), math.inf, dtype=torch.float64)
        self.plateau_bad = torch.zeros(g, dtype=torch.long)
        self.wait = torch.zeros(g, dtype=torch.long)
        self.best_epoch = torch.full((g,), -1, dtype=torch.long)
        self.epochs_run = torch.zeros(g, dtype=torch.long)
        self.best = [p.detach().clone() for p in self.params]
        self.history: list[list[dict[str, float]]] = [[] for _ in range(g)]
        self.epoch = 0

    def _save(self) -> None:
        if self.last is None:
            return
        state = {
            "epoch": self.epoch, "params": [p.detach() for p in self.params], "optimizer": self.optimizer.state_dict(),
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
        with torch.no_grad():
            for p, value in zip(self.params, saved["params"], strict=True):
                p.copy_(value)
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
        which = torch.tensor([rates.index(p.dropout) for p in self.points])
        saved_at = time.monotonic()
        while self.epoch < epochs and bool(self.active.any()):
            began = time.perf_counter()
            sampler.set_epoch(self.epoch)
            order = torch.tensor(list(sampler), dtype=torch.long)
            batches = list(order.split(batch_size))
            sizes = [len(b) for b in batches]
            masks = [_masks((0, self.params[0].shape[1]), p, self.seed, self.epoch, sizes) for p in rates]
            seen_logits = []
            for k, batch in enumerate(batches):
                x, y = x_train[batch], y_train[batch]
                logits = _forward(self.params, x, torch.stack([m[k] for m in masks])[which])
                losses = per_sample_loss(logits.reshape(-1, logits.shape[-1]), y.repeat(len(self.points)), self.task)
                loss = (losses.view(len(self.points), -1).mean(dim=1) * self.active).sum()
                for p in self.params:
                    p.grad = None
                loss.backward()
                self.optimizer.step(self.active)
                seen_logits.append(logits.detach())
            with torch.no_grad():
                val_logits = _forward(self.params, x_val, None)
            self._end_epoch(torch.cat(seen_logits, dim=1), order, y_train, val_logits, y_val, patience, began)
            self.epoch += 1
            if time.monotonic() - saved_at > SAVE_EVERY_S:
                self._save()
                saved_at = time.monotonic()
        self._save()
        return [self._outcome(g) for g in range(len(self.points))]

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
                for k, p in enumerate(self.params):
                    self.best[k][g] = p.detach()[g]
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
            self.optimizer.lr[g] *= PLATEAU_FACTOR
            self.plateau_bad[g] = 0
