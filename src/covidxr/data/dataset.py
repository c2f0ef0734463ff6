"""A lazy torch Dataset over manifest records: decode on access, resize, 3 channels, normalise.

Input size and normalisation come from the model (its ModelSpec), never from here; `Preprocess` is the one
place they are applied, so training, evaluation and serving see identical tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from covidxr.data.labels import LabelMap
from covidxr.data.manifest import Record
from covidxr.data.readers import DEFAULT_MAX_PIXELS, read_image

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Preprocess:
    """Gray [0, 1] array -> normalised (3, size, size) tensor. `augment` runs on [0, 1] RGB before normalising."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_unit_rgb(self, pixels: np.ndarray) -> torch.Tensor:
        gray = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None]
        resized = TF.resize(gray, [self.input_size, self.input_size], antialias=True).clamp_(0.0, 1.0)
        return resized.expand(3, -1, -1).contiguous()

    def normalise(self, rgb: torch.Tensor) -> torch.Tensor:
        return TF.normalize(rgb, list(self.mean), list(self.std))

    def __call__(self, pixels: np.ndarray, augment: Transform | None = None) -> torch.Tensor:
        rgb = self.to_unit_rgb(pixels)
        if augment is not None:
            rgb = augment(rgb)
        return self.normalise(rgb)


class XrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """(image tensor, class index) pairs; nothing is decoded until an item is asked for.

    With `augment` and `copies=K`, the set holds each original plus K fixed augmented copies (offline
    augmentation, as the study doubled its data with K=1). With `copies=0`, augmentation is fresh each epoch.
    With a `seed`, every augmented item is seeded from (seed, copy or epoch, index), so results do not depend
    on worker processes or on where a resumed run restarted.
    """

    def __init__(
        self,
        root: Path,
        records: Sequence[Record],
        label_map: LabelMap,
        preprocess: Preprocess,
        augment: Transform | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        copies: int = 0,
        seed: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.records = list(records)
        self.preprocess = preprocess
        self.augment = augment
        self.max_pixels = max_pixels
        self.copies = copies if augment is not None else 0
        self.seed = seed
        self.epoch = 0
        self.targets = [label_map.encode(r.label) for r in self.records] * (1 + self.copies)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records) * (1 + self.copies)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i, copy = index % len(self.records), index // len(self.records)
        augment = self.augment if (copy > 0 or self.copies == 0) else None
        if augment is not None and self.seed is not None:
            variant = copy if self.copies else 1_000 + self.epoch
            torch.manual_seed((self.seed * 1_000_003 + variant * 100_003 + i) % (2**63))
        image = read_image(self.root / self.records[i].path, self.max_pixels)
        return self.preprocess(image.pixels, augment), self.targets[index]
