"""Where the lungs are: a crop box from the lung masks a data set ships (the COVID-19 Radiography Database).

A served image comes without a mask, so the crop is one box for every image, in training and serving alike:
the median of the training masks' bounding boxes plus a margin, as fractions of width and height. It removes
what lies well outside the lungs (neck, arms, burned-in markers at the edges) without a mask at serve time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from covidxr.data.manifest import LUNG_MASK, Record
from covidxr.data.readers import read_image
from covidxr.errors import CovidxrError, ImageReadError

MARGIN = 0.05

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of width and height


def mask_box(mask: np.ndarray) -> Box | None:
    """Bounding box of a mask's foreground, as fractions; None for an empty mask."""
    ys, xs = np.nonzero(mask > 0.5)
    if len(xs) == 0:
        return None
    h, w = mask.shape
    return xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h


def lung_box(root: Path, records: Sequence[Record], margin: float = MARGIN) -> Box:
    """The median lung bounding box over the records' masks, widened by `margin` on every side."""
    boxes = []
    for r in records:
        rel = r.meta.get(LUNG_MASK)
        if not rel:
            continue
        try:
            box = mask_box(read_image(Path(root) / rel).pixels)
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
