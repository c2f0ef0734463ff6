"""Films with lung masks, decoded once at the segmenter's size, and augmentation that moves film and mask together."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from covidxr.data.lungs import read_lung_mask
from covidxr.data.manifest import LUNG_MASK, Manifest, Record
from covidxr.data.readers import read_image
from covidxr.errors import DataError, ImageReadError


def with_masks(manifest: Manifest) -> list[Record]:
    """The records whose data set ships a lung mask."""
    return [r for r in manifest.records if r.meta.get(LUNG_MASK)]


def read_mask(root: Path, record: Record, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A record's lung mask as bool at its film's `shape` (data.lungs.read_lung_mask); an unreadable one, or one
    that cannot be its film's, is a DataError naming it."""
    try:
        return read_lung_mask(root, record.meta[LUNG_MASK], shape)
    except ImageReadError as exc:
        raise DataError(f"{exc.path}: lung mask of {record.path} cannot be read ({exc.problem}: {exc})") from exc


def _squash(array: np.ndarray, size: int) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0]


@dataclass
class MaskedFilms:
    """Films and masks at size x size (uint8 and bool): a few hundred fit in memory and every epoch reads none."""

    films: torch.Tensor
    masks: torch.Tensor
    records: list[Record]

    @classmethod
    def load(cls, root: Path, records: Sequence[Record], size: int) -> MaskedFilms:
        films, masks = [], []
        for r in records:
            try:
                pixels = read_image(Path(root) / r.path).pixels
            except ImageReadError as exc:
                raise DataError(f"{Path(root) / r.path}: cannot be read ({exc.problem}: {exc})") from exc
            mask = read_mask(root, r, pixels.shape)
            films.append((_squash(pixels, size) * 255).round().clamp(0, 255).to(torch.uint8))
            masks.append(_squash(mask, size) > 0.5)
        return cls(torch.stack(films), torch.stack(masks), list(records))

    def __len__(self) -> int:
        return len(self.records)


JOINT = v2.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1))


def augment(film: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Film [0, 1] (1, H, W) and mask (1, H, W): one random affine for both, then gamma and contrast on the film."""
    moved_film, moved_mask = JOINT(tv_tensors.Image(film), tv_tensors.Mask(mask))
    gamma = float(torch.empty(1).uniform_(0.7, 1.5))
    contrast = float(torch.empty(1).uniform_(0.75, 1.25))
    out = moved_film.clamp(0, 1) ** gamma
    out = ((out - out.mean()) * contrast + out.mean()).clamp(0, 1)
    return out.as_subclass(torch.Tensor), moved_mask.as_subclass(torch.Tensor)
