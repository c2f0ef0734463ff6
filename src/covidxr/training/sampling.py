"""Samplers whose order depends only on (seed, epoch): shuffled, class-balanced or in order, identical after
resume, and sharded over distributed ranks by the sampler itself.

A DistributedSampler wrapper would not pass the epoch to a custom sampler (a balanced draw would repeat
every epoch) and pads shards with duplicates that then count twice in metrics. Here every rank draws the same
full order, pads it by wrapping to a multiple of the world size (equal shard lengths, so no rank waits), and
takes every world-th index; batches carry dataset indices so gathered metrics drop the padding.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from covidxr.training.distributed import rank_and_world


class EpochSampler(Sampler[int]):
    def __init__(
        self,
        targets: Sequence[int],
        seed: int,
        balanced: bool = False,
        dataset: object = None,
        shuffle: bool = True,
        rank: int | None = None,
        world: int | None = None,
        groups: Sequence[Hashable] | None = None,
    ) -> None:
        self.targets = list(targets)
        self.groups = list(groups) if groups is not None else None  # what a balanced draw evens out: else classes
        self.seed = seed
        self.balanced = balanced
        self.shuffle = shuffle
        self.dataset = dataset  # told the epoch too, for per-epoch augmentation seeds
        self.epoch = 0
        self._rank, self._world = rank, world  # None: from torch.distributed when iterating

    def set_epoch(self, epoch: int) -> None:
        """The loop calls this (through the mode's steps) before each epoch."""
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def _shard(self) -> tuple[int, int]:
        rank, world = rank_and_world()
        return (self._rank if self._rank is not None else rank), (self._world or world)

    def __len__(self) -> int:
        return math.ceil(len(self.targets) / self._shard()[1])

    def full_order(self) -> list[int]:
        """The epoch's order over the whole data set, the same on every rank."""
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        n = len(self.targets)
        if self.balanced:
            keys = self.groups if self.groups is not None else self.targets
            counts = Counter(keys)
            weights = torch.tensor([1.0 / counts[k] for k in keys])
            return torch.multinomial(weights, n, replacement=True, generator=generator).tolist()
        return torch.randperm(n, generator=generator).tolist() if self.shuffle else list(range(n))

    def __iter__(self) -> Iterator[int]:
        order = self.full_order()
        rank, world = self._shard()
        if world > 1 and order:
            order += order[: math.ceil(len(order) / world) * world - len(order)]
            order = order[rank::world]
        return iter(order)


class Indexed(Dataset[tuple[torch.Tensor, int, int]]):
    """(x, y, index): the index lets gathered epoch metrics drop the duplicates that pad the shards."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        x, y = self.dataset[index]
        return x, y, index


def is_balanced(balance: str) -> bool:
    """Whether `--balance` asks for balanced draws (of classes, or of source x class pairs)."""
    return balance in ("sampler", "source")


def balance_groups(balance: str, targets: Sequence[int], sources: Sequence[str]) -> list[Hashable] | None:
    """The groups a balanced draw gives equal weight: each (source, class) pair with `source`, so no hospital's
    share of a class decides what the model learns of it; None (classes, or no balanced draw) otherwise."""
    return list(zip(sources, targets, strict=True)) if balance == "source" else None


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 over samples."""
    counts = torch.bincount(torch.tensor(list(targets)), minlength=num_classes).float().clamp(min=1)
    weights = len(targets) / (num_classes * counts)
    return weights


def once_per_item(index: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Rows of `columns` once per data-set item, in item order: a balanced draw repeats items, and shards of a
    distributed epoch are padded with repeats, but epoch metrics count every item once."""
    _, first = np.unique(index, return_index=True)
    return tuple(c[first] for c in columns)
