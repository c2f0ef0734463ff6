"""Where the lungs are: a fixed ellipse over both lung fields (the audit's occlusion, the CAM-energy check), and a
crop box from the lung masks a data set ships (the COVID-19 Radiography Database).

A served image comes without a mask, so the crop is one box for every image, in training and serving alike:
the median of the training masks' bounding boxes plus a margin, as fractions of width and height. It removes
what lies well outside the lungs (neck, arms, burned-in markers at the edges) without a mask at serve time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from covidxr.data.manifest import LUNG_MASK, Record
from covidxr.data.readers import Problem, read_image
from covidxr.errors import CovidxrError, ImageReadError

MARGIN = 0.05

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of width and height


@dataclass(frozen=True)
class LungEllipse:
    """Centre and half-axes as fractions of width and height: by default both lung fields and the mediastinum."""

    cx: float = 0.5
    cy: float = 0.47
    rx: float = 0.40
    ry: float = 0.36

    def mask(self, height: int, width: int) -> torch.Tensor:
        yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
        return ((xx - self.cx) / self.rx) ** 2 + ((yy - self.cy) / self.ry) ** 2 <= 1


def mask_box(mask: np.ndarray) -> Box | None:
    """Bounding box of a mask's foreground, as fractions; None for an empty mask."""
    ys, xs = np.nonzero(mask > 0.5)
    if len(xs) == 0:
        return None
    h, w = mask.shape
    return xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h


def read_lung_mask(root: Path, rel: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A record's lung mask (its `lung_mask`, relative to the data set) as bool; several parts joined by "|"
    (Montgomery's left and right masks) are united. With `shape` (the film's), a mask drawn at another scale
    (SCR's 1024 px for JSRT's 2048 px films) is brought to it; one of another aspect is an ImageReadError, as is
    a file that cannot be read, naming it."""
    parts = [read_image(Path(root) / part).pixels > 0.5 for part in rel.split("|")]
    mask = np.logical_or.reduce(parts) if len(parts) > 1 else parts[0]
    if shape is None or mask.shape == tuple(shape):
        return mask
    (h, w), (fh, fw) = mask.shape, shape
    if abs(w / h - fw / fh) > 0.01 * fw / fh:
        raise ImageReadError(
            Path(root) / rel.split("|")[0], Problem.CORRUPT, f"lung mask is {w}x{h} px but its film is {fw}x{fh}"
        )
    import cv2

    return cv2.resize(mask.astype(np.uint8), (fw, fh), interpolation=cv2.INTER_NEAREST).astype(bool)


def lung_box(root: Path, records: Sequence[Record], margin: float = MARGIN) -> Box:
    """The median lung bounding box over the records' masks, widened by `margin` on every side."""
    boxes = []
    for r in records:
        rel = r.meta.get(LUNG_MASK)
        if not rel:
            continue
        try:
            box = mask_box(read_lung_mask(root, rel))
        except ImageReadError:
            continue
        if box is not None:
            boxes.append(box)
    if not boxes:
        raise CovidxrError(
            "--lung-crop needs lung masks with the training images (the COVID-19 Radiography Database ships them "
            "as <Class>/masks/); this data set has none"
        )
    x0, y0, x1, y1 = np.median(np.array(boxes), axis=0)
    return (
        float(max(0.0, x0 - margin)),
        float(max(0.0, y0 - margin)),
        float(min(1.0, x1 + margin)),
        float(min(1.0, y1 + margin)),
    )
