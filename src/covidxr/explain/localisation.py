"""Does a CAM point at the lesion? Pointing game and share of CAM energy inside a mask (pure functions)."""

from __future__ import annotations

import numpy as np


def _fit(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


TOLERANCE = 15 / 224  # the pointing game's 15-pixel tolerance (Zhang et al. 2016), as a fraction of the side


def _tolerant(mask: np.ndarray, shape: tuple[int, int], tolerance: float) -> np.ndarray:
    import cv2

    m = _fit(mask, shape).astype(np.uint8)
    r = round(tolerance * max(shape))
    if r < 1:
        return m.astype(bool)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(m, kernel).astype(bool)


def pointing_hit(cam: np.ndarray, mask: np.ndarray, tolerance: float = TOLERANCE) -> bool:
    """Whether the CAM's maximum falls on the mask, within the tolerance."""
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    return bool(_tolerant(mask, cam.shape, tolerance)[y, x])


def energy_inside(cam: np.ndarray, mask: np.ndarray) -> float:
    m = _fit(mask, cam.shape)
    total = float(cam.sum())
    return float(cam[m].sum() / total) if total > 0 else 0.0


def chance_rate(mask: np.ndarray, tolerance: float = TOLERANCE) -> float:
    """Hit rate of a uniformly random point under the same tolerance: the tolerant mask's area fraction."""
    return float(_tolerant(mask, mask.shape, tolerance).mean())
