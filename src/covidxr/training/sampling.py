"""A sampler whose order depends only on (seed, epoch): shuffled or class-balanced, and identical after resume."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    def __init__(self, targets: Sequence[int], seed: int, balanced: bool = False, dataset: object = None) -> None:
        self.targets = list(targets)
        self.seed = seed
        self.balanced = balanced
        self.dataset = dataset  # told the epoch too, for per-epoch augmentation seeds
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this before each epoch."""
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # type: ignore[union-attr]

    def __len__(self) -> int:
        return len(self.targets)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        n = len(self.targets)
        if self.balanced:
            counts = Counter(self.targets)
            weights = torch.tensor([1.0 / counts[t] for t in self.targets])
            return iter(torch.multinomial(weights, n, replacement=True, generator=generator).tolist())
        return iter(torch.randperm(n, generator=generator).tolist())


def class_weights(targets: Sequence[int], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, normalised to mean 1 over samples."""
    counts = torch.bincount(torch.tensor(list(targets)), minlength=num_classes).float().clamp(min=1)
    weights = len(targets) / (num_classes * counts)
    return weights
