"""One film's lungs from a probability map: post-processing, plausibility, box, and the Dice overlap.

A segmenter's raw output can hold specks, holes and a third blob over the stomach; the lungs are the two largest
components, filled. A mask that still does not look like lungs (too small or large an area, a box of the wrong
shape) is flagged with its reason and the film falls back to the whole image: never a crash, never a silent crop
to noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from covidxr.data.lungs import Box, mask_box

AREA_RANGE = (0.05, 0.75)  # share of the film the two lungs may cover
ASPECT_RANGE = (0.6, 3.0)  # lung box width / height (both lungs side by side are wider than tall, or about square)
MARGIN = 0.05  # crop margin around the lung box, as a fraction of the box's size


@dataclass(frozen=True)
class LungGeometry:
    """A film's cleaned lung mask (bool, the film's size), its box, and why it was rejected (None: plausible)."""

    mask: np.ndarray
    box: Box | None
    flagged: str | None = None

    @property
    def plausible(self) -> bool:
        return self.flagged is None

    @property
    def area(self) -> float:
        return float(self.mask.mean())

    @classmethod
    def from_probability(cls, probability: np.ndarray, threshold: float = 0.5) -> LungGeometry:
        mask = clean_mask(probability >= threshold)
        return cls(mask, mask_box(mask), implausible(mask))

    def crop_box(self, margin: float = MARGIN) -> Box:
        """The lung box widened by `margin` of its size on each side; the whole film when flagged."""
        if self.box is None or not self.plausible:
            return (0.0, 0.0, 1.0, 1.0)
        x0, y0, x1, y1 = self.box
        dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
        return max(0.0, x0 - dx), max(0.0, y0 - dy), min(1.0, x1 + dx), min(1.0, y1 + dy)


def clean_mask(mask: np.ndarray) -> np.ndarray:
    """Keep the two largest connected components and fill their holes."""
    labelled, n = ndimage.label(mask)
    if n == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = ndimage.sum_labels(np.ones_like(labelled), labelled, index=np.arange(1, n + 1))
    keep = np.argsort(sizes)[::-1][:2] + 1
    return ndimage.binary_fill_holes(np.isin(labelled, keep))


def implausible(mask: np.ndarray) -> str | None:
    """Why a cleaned mask is not a pair of lungs, or None."""
    area = float(mask.mean())
    if not AREA_RANGE[0] <= area <= AREA_RANGE[1]:
        return f"lung area {area:.0%} of the film, outside {AREA_RANGE[0]:.0%}-{AREA_RANGE[1]:.0%}"
    x0, y0, x1, y1 = mask_box(mask) or (0.0, 0.0, 1.0, 1.0)
    h, w = mask.shape
    aspect = ((x1 - x0) * w) / max((y1 - y0) * h, 1e-9)
    if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
        return f"lung box width/height {aspect:.2f}, outside {ASPECT_RANGE[0]}-{ASPECT_RANGE[1]}"
    return None


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """2|A∩B| / (|A| + |B|); two empty masks agree perfectly."""
    a, b = np.asarray(predicted, bool), np.asarray(truth, bool)
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0
