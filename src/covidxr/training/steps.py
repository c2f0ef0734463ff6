"""A classifier's steps in the training loop (training.loop): the study's loss on each training batch, and each
epoch's train and val numbers — from every rank's outputs, gathered, under distributed training, so every rank
decides alike and two processes compute the numbers one would. Also the loss, optimizer and schedule every
classifier trainer shares (the loop, the stacked heads of a search).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, get_args

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covidxr.config import OptimizerName
from covidxr.engine.history import HISTORY_COLUMNS
from covidxr.errors import CovidxrError
from covidxr.models.head import positive_scores
from covidxr.training.metrics import epoch_metrics
from covidxr.training.sampling import EpochSampler, once_per_item

OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs, targets, data-set indices


SMALL_ROW = 8192  # features per item up to which a step runs on one thread (pooled features: 1280)


def step_threads(features_per_item: int | None) -> int:
    """Threads for training steps on items this wide (None: images). Pooled features make steps too small to
    split across threads (splitting only adds synchronisation): one thread (a stacked search's 36 heads: 25 s,
    on two threads 35 s); trunk outputs and images: all."""
    small = features_per_item is not None and features_per_item <= SMALL_ROW
    return 1 if small else torch.get_num_threads()


@contextmanager
def num_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for a block, then as they were."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def per_sample_loss(logits: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """Unweighted loss of each sample: mean BCE over the study's sigmoid outputs (one-hot targets), else CE."""
    if task == "binary":
        onehot = F.one_hot(targets, logits.shape[1]).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, onehot, reduction="none").mean(dim=1)
    return F.cross_entropy(logits, targets, reduction="none")


def classification_loss(
    logits: torch.Tensor, targets: torch.Tensor, task: str, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary: the study's two sigmoid outputs with one-hot targets and binary cross-entropy; else softmax CE.
    With class weights, a weighted mean over the batch."""
    per_sample = per_sample_loss(logits, targets, task)
    if class_weights is None:
        return per_sample.mean()
    weights = class_weights.to(logits.device)[targets]
    return (per_sample * weights).sum() / weights.sum()


def _all_gather(fabric: L.Fabric, tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's shard (same length everywhere), back in the epoch's order: EpochSampler deals item i of the
    order to rank i % world, so row j of rank r was the order's item j * world + r."""
    if fabric.world_size == 1:
        return tensor
    gathered = fabric.all_gather(tensor.to(fabric.device).contiguous())
    return gathered.transpose(0, 1).flatten(0, 1).cpu()  # type: ignore[union-attr]


class TensorBatches:
    """(x, y, index) batches of in-memory tensors (cached features) in a sampler's order: indexing, not a
    DataLoader, whose per-item collation costs more than a head's whole step."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, sampler: EpochSampler, batch_size: int) -> None:
        self.x, self.y, self.sampler, self.batch_size = x, y, sampler, batch_size

    def __iter__(self) -> Iterator[Batch]:
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        for index in order.split(self.batch_size):
            yield self.x[index.to(self.x.device)], self.y[index.to(self.y.device)], index


class ClassifierSteps:
    """The classifier's part of the loop, for every mode alike (head on cached features, tail on the cached trunk,
    whole network on images): batches carry data-set indices, so each epoch's numbers count every item once."""

    monitor, maximize = "val_loss", False
    columns: tuple[str, ...] = HISTORY_COLUMNS

    def __init__(
        self,
        task: str,
        train: Iterable[Batch],
        val: Iterable[Batch],
        sampler: EpochSampler,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        """`sampler`: the training batches' EpochSampler (told the epoch); `class_weights`: the weighted loss."""
        self.task, self.train, self.val, self.sampler, self.class_weights = task, train, val, sampler, class_weights
        self._seen: list[Batch] = []

    def train_batches(self, epoch: int) -> Iterable[Batch]:
        self.sampler.set_epoch(epoch)
        self._seen = []
        return self.train

    def train_loss(self, net: nn.Module, batch: Batch) -> torch.Tensor:
        x, y, index = batch
        logits = net(x)
        self._seen.append((logits.detach(), y, index))  # scored once at the epoch's end: a head's step is tiny
        return classification_loss(logits, y, self.task, self.class_weights)

    def epoch_numbers(self, fabric: L.Fabric, net: nn.Module) -> dict[str, float]:
        """Train numbers from the epoch's outputs, val numbers from a pass over the validation batches."""
        val = [(net(x), y, index) for x, y, index in self.val]
        logged = {f"train_{k}": v for k, v in epoch_log(*self._gathered(fabric, self._seen), self.task).items()}
        return logged | {f"val_{k}": v for k, v in epoch_log(*self._gathered(fabric, val), self.task).items()}

    def _gathered(self, fabric: L.Fabric, outputs: list[Batch]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, targets, per-sample losses) over every rank, one row per data-set item in item order: shards
        are put back in the epoch's order, so each item keeps its first draw (as in one process) and the
        repeats that padded the shards fall away."""
        logits, y, index = (torch.cat([o[k] for o in outputs]) for k in range(3))
        logits = logits.float()
        parts = (positive_scores(logits, self.task), y, per_sample_loss(logits, y, self.task), index)
        scores, targets, losses, order = (_all_gather(fabric, p.cpu()).numpy() for p in parts)
        scores, targets, losses = once_per_item(order, scores, targets, losses)
        return scores, targets, losses


# Our names -> timm's optimizer factory with the plain-PyTorch defaults this project has always trained with:
# `sgd` is heavy-ball momentum (timm's `sgd` is Nesterov), RMSprop keeps PyTorch's alpha (timm's default is 0.9).
# PyTorch's fused kernels where it has them (CPU and CUDA): one pass over each tensor instead of one per operation;
# a stacked-head step of six 64-unit heads on 1,280 features: Adam 0.61 vs 1.80 ms, same weights to 5e-7.
TIMM_OPTIMIZER: dict[str, tuple[str, dict[str, Any]]] = {
    "adam": ("adam", {"fused": True}),
    "adamw": ("adamw", {"fused": True}),
    "sgd": ("momentum", {"fused": True}),
    "rmsprop": ("rmsprop", {"alpha": 0.99}),
}


def make_optimizer(
    net: nn.Module | list[dict[str, Any]], name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters; the loop and the stacked heads share it. Parameters are
    passed as a list, so timm applies the weight decay to all of them, as before; param
    groups (dicts) may set their own lr, weight_decay and momentum (the stacked heads: one group a trial)."""
    from timm.optim import create_optimizer_v2

    params: list[Any] = [p for p in net.parameters() if p.requires_grad] if isinstance(net, nn.Module) else net
    if not params:
        raise CovidxrError("nothing to train: every parameter is frozen")
    if name not in TIMM_OPTIMIZER:
        raise CovidxrError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    opt, extra = TIMM_OPTIMIZER[name]
    return create_optimizer_v2(params, opt, lr=lr, weight_decay=weight_decay, momentum=momentum, **extra)


def make_schedule(optimizer: torch.optim.Optimizer, schedule: str) -> Any:
    """`plateau`: halve the rate after 4 epochs without a better validation loss; else None."""
    if schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=4)
    return None


def epoch_log(scores: np.ndarray, targets: np.ndarray, losses: np.ndarray, task: str) -> dict[str, float]:
    """An epoch's logged numbers: mean loss and the metrics (NaN, e.g. AUC with one class, logged as 0)."""
    metrics = epoch_metrics(scores, targets, task)
    return {"loss": float(losses.mean()), **{k: float(np.nan_to_num(v, nan=0.0)) for k, v in metrics.items()}}
