"""Synthetic chest-X-ray phantoms: the embedded default data set, with lesion masks for explanation checks.

Positives carry soft opacities inside the lung fields. Everyone carries look-alike blobs outside the lungs
(soft tissue, markers on the film), drawn the same way for both classes. Size, contrast and brightness vary per
patient far more than a lesion shifts global statistics, so only looking inside the lungs separates the
classes: a phantom set has no shortcut by design (the shortcut audit checks exactly that).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

POSITIVE, NEGATIVE = "COVID-19", "normal"
SOURCE = "covidxr synthetic phantom"


@dataclass(frozen=True)
class Anatomy:
    """What stays the same across one patient's images."""

    width: int
    height: int
    body: float  # half-width of the body outline, as a fraction of the width
    lung_w: float
    lung_h: float
    heart: float
    brightness: float
    contrast: float


def _patient(rng: np.random.Generator, size: int = 224) -> Anatomy:
    height = int(rng.integers(size, size * 10 // 7))
    return Anatomy(
        width=int(height * rng.uniform(0.85, 1.2)),
        height=height,
        body=rng.uniform(0.38, 0.46),
        lung_w=rng.uniform(0.13, 0.17),
        lung_h=rng.uniform(0.28, 0.34),
        heart=rng.uniform(0.08, 0.12),
        brightness=rng.uniform(-0.12, 0.12),
        contrast=rng.uniform(0.7, 1.3),
    )


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    return np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2)))


def render(anatomy: Anatomy, positive: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image (uint8), its lesion mask (bool, empty for negatives) and its lung mask (bool)."""
    h, w = anatomy.height, anatomy.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / np.float32(h)
    cx = w / h / 2 + rng.normal(0, 0.01)
    img = np.full((h, w), 0.08, dtype=np.float32)
    img[_ellipse(yy, xx, 0.58, cx, 0.55, anatomy.body * w / h)] = 0.55  # soft tissue
    lung_y = 0.47 + rng.normal(0, 0.01)
    lungs = np.zeros((h, w), dtype=bool)
    for side in (-1, 1):
        lx = cx + side * (anatomy.lung_w + 0.05)
        lungs |= _ellipse(yy, xx, lung_y, lx, anatomy.lung_h, anatomy.lung_w)
    img[lungs] = 0.22
    for k in range(9):  # ribs: bright arcs through both lungs
        ry = lung_y - anatomy.lung_h + 0.07 * k + 0.02
        arc = np.abs(yy - ry - 0.06 * ((xx - cx) / 0.3) ** 2) < 0.008
        img[arc & lungs] += 0.12
    img[np.abs(xx - cx) < 0.035] += 0.25  # spine
    img += 0.3 * _blob(yy, xx, lung_y + 0.12, cx + 0.04, anatomy.heart)  # heart shadow

    lesion = np.zeros((h, w), dtype=bool)
    lung_pts = np.argwhere(lungs)
    tissue_pts = np.argwhere(~lungs & (img > 0.3))
    dark_pts = np.argwhere(~lungs & (img < 0.3) & (np.abs(xx - cx) < anatomy.body * w / h + 0.1))
    # Distractors for everyone, drawn the same way whatever the label: soft-tissue blobs and markers on the
    # film beside the body. Only the lesions inside the lungs tell the classes apart.
    for pts in (tissue_pts, dark_pts):
        for _ in range(int(rng.integers(0, 3))):
            y, x = pts[rng.integers(len(pts))]
            img += rng.uniform(0.2, 0.35) * _blob(yy, xx, y / h, x / h, rng.uniform(0.03, 0.06))
    img += rng.normal(0, 0.03, (h, w)).astype(np.float32)
    lesions = np.zeros((h, w), dtype=np.float32)
    if positive:
        for _ in range(int(rng.integers(1, 4))):
            y, x = lung_pts[rng.integers(len(lung_pts))]
            g = _blob(yy, xx, y / h, x / h, rng.uniform(0.03, 0.06))
            lesions += rng.uniform(0.3, 0.45) * g
            lesion |= (g > 0.5) & lungs
    # Brightness and contrast are drawn per image independently of the label, then imposed on the finished
    # film: whatever the lesions add, the film's mean and spread say nothing about the class.
    img += lesions
    target_mean = 0.38 + anatomy.brightness + rng.normal(0, 0.015)
    target_std = 0.2 * anatomy.contrast * rng.uniform(0.95, 1.05)
    img = (img - img.mean()) / img.std() * target_std + target_mean
    out = np.clip(img, 0, 1) ** rng.uniform(0.85, 1.15)
    return (out * 255).round().astype(np.uint8), lesion, lungs


def generate(
    out: Path | str, n: int = 400, seed: int = 0, images_per_patient: tuple[int, int] = (1, 4), size: int = 224
) -> Path:
    """Write `n` phantoms, their lesion masks, their lung masks (`lung_mask` column) and `labels.csv` under `out`;
    returns the CSV path. `size`: the shortest films' height (heights run to 1.4x it); a small size makes sets
    of 100,000 films quick to write and read, for measuring how a run scales."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows: list[list[str]] = []
    patient = 0
    while len(rows) < n:
        anatomy = _patient(rng, size)
        positive = bool(rng.integers(2))
        label = POSITIVE if positive else NEGATIVE
        pid = f"phantom-{patient:04d}"
        patient += 1
        for k in range(min(int(rng.integers(*images_per_patient, endpoint=True)), n - len(rows))):
            pixels, lesion, lungs = render(anatomy, positive, rng)
            name = f"{pid}_{k}.png"
            image_path = out / "images" / label / _shard(patient, n) / name
            image_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(image_path)
            lungs_path = out / "lungs" / _shard(patient, n) / name
            lungs_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(lungs.astype(np.uint8) * 255).save(lungs_path)
            mask_rel = ""
            if positive:
                mask_path = out / "masks" / _shard(patient, n) / name
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(lesion.astype(np.uint8) * 255).save(mask_path)
                mask_rel = mask_path.relative_to(out).as_posix()
            rows.append([image_path.relative_to(out).as_posix(), label, pid, SOURCE, mask_rel,
                         lungs_path.relative_to(out).as_posix()])  # fmt: skip
    labels = out / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "patient_id", "source", "mask_path", "lung_mask"])
        writer.writerows(rows)
    return labels


def _shard(patient: int, n: int) -> str:
    """Large sets spread over folders of at most about a thousand patients (file systems slow down past that);
    small ones keep the flat layout."""
    return "" if n <= 5000 else f"{patient // 1000:03d}"
