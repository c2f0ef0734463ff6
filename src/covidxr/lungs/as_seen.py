"""A film's lungs where the network sees them: the lung mask carried through the run's own preprocessing
(its lung cut, crops, squash or pad) to the input's size. The audit hides them; the CAM check weighs them.

Where the lungs come from, in order: the run's lung model (the one that cut the input), the mask the data set
ships with the film, else none known (callers fall back to the fixed ellipse and say so).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from covidxr.data.dataset import Preprocess, crop_box
from covidxr.data.lungs import LungEllipse, read_lung_mask
from covidxr.data.manifest import LUNG_MASK, Record
from covidxr.errors import ImageReadError

FROM_MODEL, FROM_DATA, FROM_ELLIPSE = "the run's lung model", "the data set's lung masks", "a fixed ellipse"


def lungs_as_seen(pre: Preprocess, pixels: np.ndarray, shipped: np.ndarray | None) -> tuple[np.ndarray | None, str]:
    """(bool mask at input_size x input_size, or None, and where it came from)."""
    geometry = replace(pre, lungs="none", equalize="none", finder=None)  # the same cuts, no intensity change
    if pre.lungs != "none" and pre.finder is not None:
        mask, box = pre.finder(pixels)
        if mask is not None:
            return _seen(geometry, crop_box(mask.astype(np.float32), box)), FROM_MODEL
    if shipped is not None and shipped.shape == pixels.shape:
        return _seen(geometry, shipped.astype(np.float32)), FROM_DATA
    return None, FROM_ELLIPSE


def _seen(geometry: Preprocess, mask: np.ndarray) -> np.ndarray:
    return geometry.to_unit_rgb(mask)[0].numpy() > 0.5


def record_lungs(pre: Preprocess, root: Path, record: Record, pixels: np.ndarray) -> tuple[np.ndarray, str]:
    """A record's lungs as seen, falling back to the ellipse at the input's size (and saying so, also where the
    data set names a mask that cannot be read)."""
    rel = record.meta.get(LUNG_MASK)
    shipped, unreadable = None, False
    if rel:
        try:
            shipped = read_lung_mask(root, rel, pixels.shape)
        except ImageReadError:
            unreadable = True
    mask, source = lungs_as_seen(pre, pixels, shipped)
    if mask is None:
        mask = LungEllipse().mask(pre.input_size, pre.input_size).numpy()
        source = FROM_ELLIPSE + (" (the data set's mask unreadable)" if unreadable else "")
    return mask, source


def hide(rgb: torch.Tensor, lungs: np.ndarray) -> torch.Tensor:
    """The lungs replaced by the image's mean (per channel): nothing inside them is left to see."""
    mask = torch.from_numpy(lungs)
    out = rgb.clone()
    mean = rgb.mean(dim=(-2, -1), keepdim=True).expand_as(rgb)
    out[..., mask] = mean[..., mask]
    return out
