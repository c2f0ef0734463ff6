"""The LightningModule: one for images through the whole network and for cached features through the head.

Epoch metrics are computed here from collected outputs when validation ends, so that train and val metrics
of an epoch are both in `callback_metrics` before early stopping, checkpointing and the history writer run.
Under distributed training they are computed from every rank's outputs, gathered, so every rank decides alike.
"""

from __future__ import annotations

from typing import Any, get_args

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from covidxr.config import OptimizerName, TrainConfig
from covidxr.errors import CovidxrError
from covidxr.models.head import positive_scores
from covidxr.training.metrics import epoch_metrics
from covidxr.training.sampling import once_per_item

OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)


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


def _all_gather(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's shard (same length everywhere), back in the epoch's order: EpochSampler deals item i of the
    order to rank i % world, so row j of rank r was the order's item j * world + r."""
    out = [torch.empty_like(tensor) for _ in range(world)]
    torch.distributed.all_gather(out, tensor.contiguous())
    return torch.stack(out, dim=1).flatten(0, 1)


class ClassifierModule(L.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        task: str,
        tc: TrainConfig,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        """`tc`: a resolved training config (optimizer, lr, weight decay, momentum, schedule)."""
        super().__init__()
        if tc.optimizer not in OPTIMIZERS:
            raise CovidxrError(f"unknown optimizer {tc.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        self.net, self.task, self.tc, self.class_weights = net, task, tc, class_weights
        self._outputs: dict[str, list[tuple[torch.Tensor, ...]]] = {"train": [], "val": []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y, index = batch
        logits = self.net(x)
        loss = classification_loss(logits, y, self.task, self.class_weights if stage == "train" else None)
        detached = logits.detach().float()
        scores = positive_scores(detached, self.task)
        losses = per_sample_loss(detached, y, self.task)
        self._outputs[stage].append((scores.cpu(), y.detach().cpu(), losses.cpu(), index.detach().cpu()))
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_train_epoch_start(self) -> None:
        self._outputs["train"].clear()

    def on_validation_epoch_start(self) -> None:
        self._outputs["val"].clear()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        for stage in ("train", "val"):
            if not self._outputs[stage]:
                continue
            for name, value in epoch_log(*self._gathered(stage), self.task).items():
                self.log(f"{stage}_{name}", value, sync_dist=True)  # equal on every rank: the mean changes nothing

    def _gathered(self, stage: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, targets, per-sample losses) of the epoch over every rank, one row per data-set item in
        item order: shards are gathered back into the epoch's order, so each item keeps its first draw and the
        repeats that padded the shards fall away, and two processes compute the numbers one would."""
        outputs = self._outputs[stage]
        parts = [torch.cat([o[k] for o in outputs]) for k in range(4)]
        if self.trainer.world_size > 1:  # equal shard lengths (EpochSampler): a plain all-gather
            parts = [_all_gather(p.to(self.device), self.trainer.world_size).cpu() for p in parts]
        scores, targets, losses, index = (p.numpy() for p in parts)
        return once_per_item(index, scores, targets, losses)  # type: ignore[return-value]

    def configure_optimizers(self) -> Any:
        tc = self.tc
        optimizer = make_optimizer(self.net, tc.optimizer, tc.lr, tc.weight_decay, tc.momentum)  # type: ignore[arg-type]
        schedule = make_schedule(optimizer, tc.lr_schedule)  # type: ignore[arg-type]
        if schedule is not None:
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "monitor": "val_loss"}}
        return optimizer


# Our names -> timm's optimizer factory with the plain-PyTorch defaults this project has always trained with:
# `sgd` is heavy-ball momentum (timm's `sgd` is Nesterov), RMSprop keeps PyTorch's alpha (timm's default is 0.9).
TIMM_OPTIMIZER: dict[str, tuple[str, dict[str, Any]]] = {
    "adam": ("adam", {}),
    "adamw": ("adamw", {}),
    "sgd": ("momentum", {}),
    "rmsprop": ("rmsprop", {"alpha": 0.99}),
}


def make_optimizer(
    net: nn.Module | list[dict[str, Any]], name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters; the Lightning module, the head loop and the stacked heads
    share it. Parameters are passed as a list, so timm applies the weight decay to all of them, as before; param
    groups (dicts) may set their own lr, weight_decay and momentum (the stacked heads: one group a trial)."""
    from timm.optim import create_optimizer_v2

    params: list[Any] = [p for p in net.parameters() if p.requires_grad] if isinstance(net, nn.Module) else net
    if not params:
        raise CovidxrError("nothing to train: every parameter is frozen")
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
