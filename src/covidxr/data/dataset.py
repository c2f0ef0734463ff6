"""A lazy torch Dataset over manifest records: decode on access, resize, 3 channels, normalise.

Input size and normalisation come from the model (its ModelSpec), never from here; `Preprocess` is the one
place they are applied, so training, evaluation and serving see identical tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from covidxr.data.choices import Equalize, LungInput, ResizeMode
from covidxr.data.labels import LabelMap
from covidxr.data.lungs import Box
from covidxr.data.manifest import Record
from covidxr.data.readers import DEFAULT_MAX_PIXELS, read_image
from covidxr.errors import CovidxrError

if TYPE_CHECKING:
    from covidxr.data.film_cache import FilmRows

Transform = Callable[[torch.Tensor], torch.Tensor]
# A film's own lungs (covidxr.lungs.LungView): its lung mask, None where the segmentation was flagged as implausible
# (the film then stays whole), and the box to crop to.
LungFinder = Callable[[np.ndarray], tuple[np.ndarray | None, Box]]


@dataclass(frozen=True)
class Preprocess:
    """Gray [0, 1] array -> normalised (channels, size, size) tensor. `augment` runs on [0, 1] RGB before
    normalising; a one-channel network gets the first (the film is grey, its channels alike).

    Against acquisition cues, before resizing: `lungs` restricts each film to its own lungs, found by the run's
    lung model (`finder`): `crop` to their box plus a margin, `mask` also flattens everything outside them to the
    lungs' mean; `lung_box` keeps the box where the training masks put the lungs;
    `border_crop` cuts that fraction from every side (burned-in
    markers, collimator edges); `equalize` spreads each image's own histogram (`hist`) or does so locally
    (`clahe`), so exposure and processing differences between hospitals shrink. `resize`: `squash` (the
    study's: aspect ratio lost), `pad` (aspect kept, black bands), `crop` (central square: no aspect cue left).
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: ResizeMode = "squash"
    border_crop: float = 0.0
    equalize: Equalize = "none"
    lung_box: Box | None = None  # x0, y0, x1, y1 fractions (data.lungs)
    lungs: LungInput = "none"
    finder: LungFinder | None = field(default=None, compare=False, repr=False)
    channels: int = 3  # the network's input channels: the grey film once per channel

    def to_unit_gray(self, pixels: np.ndarray) -> np.ndarray:
        """The image as the network will see it, before resizing: cropped, equalised, squared."""
        px = np.asarray(pixels, dtype=np.float32)
        if self.lungs != "none":
            px = self.restrict_to_lungs(px)
        if self.lung_box is not None:
            px = crop_box(px, self.lung_box)
        if self.border_crop > 0:
            h, w = px.shape
            dy, dx = int(h * self.border_crop), int(w * self.border_crop)
            px = px[dy : h - dy, dx : w - dx]
        if self.equalize != "none":
            px = equalise(px, self.equalize)
        if self.resize != "squash":
            px = square(px, self.resize)
        return px

    def restrict_to_lungs(self, px: np.ndarray) -> np.ndarray:
        if self.finder is None:
            raise CovidxrError(
                f"this model takes lung-restricted input (--lungs {self.lungs}) but no lung model was loaded with it"
            )
        mask, box = self.finder(px)
        if self.lungs == "mask" and mask is not None:
            px = np.where(mask, px, px[mask].mean()).astype(np.float32)
        return crop_box(px, box)

    def to_uint8(self, pixels: np.ndarray) -> np.ndarray:
        """The film as the network takes it, grey at its input size, in 8 bits: what the film cache stores, so a
        film read from the cache and one decoded now give the network the same tensor."""
        gray = torch.from_numpy(np.ascontiguousarray(self.to_unit_gray(pixels)))[None]
        resized = TF.resize(gray, [self.input_size, self.input_size], antialias=True)[0]
        return resized.clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8).numpy()

    def to_unit_rgb(self, pixels: np.ndarray) -> torch.Tensor:
        return unit_rgb(self.to_uint8(pixels))

    def from_uint8(self, gray8: np.ndarray, augment: Transform | None = None) -> torch.Tensor:
        """A film already at the network's size (to_uint8, or the film cache) -> the network's input."""
        rgb = unit_rgb(gray8)
        if augment is not None:
            rgb = augment(rgb)
        return self.normalise(rgb)

    def normalise(self, rgb: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> the network's input: normalised, its own number of channels."""
        return TF.normalize(rgb, list(self.mean), list(self.std))[..., : self.channels, :, :]

    def __call__(self, pixels: np.ndarray, augment: Transform | None = None) -> torch.Tensor:
        return self.from_uint8(self.to_uint8(pixels), augment)

    def pixel_key(self) -> dict[str, object]:
        """Everything that changes the 8-bit film (to_uint8), for the film cache's key; the lung model's identity
        is the caller's to add."""
        return {"input_size": self.input_size, "resize": self.resize, "border_crop": self.border_crop,
                "equalize": self.equalize, "lung_box": self.lung_box, "lungs": self.lungs}  # fmt: skip


def unit_rgb(gray8: np.ndarray) -> torch.Tensor:
    """8-bit grey (size, size) -> [0, 1] RGB (3, size, size)."""
    return torch.from_numpy(np.ascontiguousarray(gray8)).float().div_(255.0)[None].expand(3, -1, -1).contiguous()


def crop_box(px: np.ndarray, box: Box) -> np.ndarray:
    """The part of a film inside a box of fractions (never empty)."""
    h, w = px.shape
    x0, y0, x1, y1 = box
    return px[int(y0 * h) : max(int(y0 * h) + 1, round(y1 * h)), int(x0 * w) : max(int(x0 * w) + 1, round(x1 * w))]


def equalise(px: np.ndarray, how: str) -> np.ndarray:
    """Histogram equalisation of one image (global, or CLAHE on 8x8 tiles with clip limit 2)."""
    if how == "clahe":
        import cv2

        wide = np.clip(np.round(px * 65535), 0, 65535).astype(np.uint16)  # OpenCV spreads 16-bit over 0..65535
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(wide).astype(np.float32) / 65535.0
    levels = np.clip(np.round(px * 4095), 0, 4095).astype(np.uint16)  # 12 bits keep 16-bit detail
    counts = np.bincount(levels.ravel(), minlength=4096)
    cdf = np.cumsum(counts).astype(np.float64)
    lo = cdf[np.flatnonzero(counts)[0]]
    span = max(cdf[-1] - lo, 1.0)
    return ((cdf[levels] - lo) / span).astype(np.float32)


def square(px: np.ndarray, how: str) -> np.ndarray:
    """`pad`: centre the image on a black square; `crop`: keep its central square."""
    h, w = px.shape
    if h == w:
        return px
    if how == "crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return px[top : top + side, left : left + side]
    side = max(h, w)
    out = np.zeros((side, side), dtype=px.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = px
    return out


class XrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """(image tensor, class index) pairs; nothing is decoded until an item is asked for.

    With `augment` and `copies=K`, the set holds each original plus K fixed augmented copies (offline
    augmentation, as the study doubled its data with K=1). With `copies=0`, augmentation is fresh each epoch.
    With a `seed`, every augmented item is seeded from (seed, copy or epoch, film), the film being its content
    hash where the data were checked (else its index), so results depend neither on worker processes, nor on
    where a resumed run restarted, nor on where the film sits in the split. `films`: where each record's 8-bit
    film lies in the film cache (data.film_cache); a record not there is decoded.
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
        films: FilmRows | None = None,
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
        self.films = films
        self.stable = [int(r.film[:15], 16) if r.film else i for i, r in enumerate(self.records)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records) * (1 + self.copies)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i, copy = index % len(self.records), index // len(self.records)
        augment = self.augment if (copy > 0 or self.copies == 0) else None
        if augment is not None and self.seed is not None:
            variant = copy if self.copies else 1_000 + self.epoch
            torch.manual_seed((self.seed * 1_000_003 + variant * 100_003 + self.stable[i]) % (2**63))
        gray8 = self.films.get(i) if self.films is not None else None
        if gray8 is None:
            gray8 = self.preprocess.to_uint8(read_image(self.root / self.records[i].path, self.max_pixels).pixels)
        return self.preprocess.from_uint8(gray8, augment), self.targets[index]
