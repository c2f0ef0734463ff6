"""Preview grids: originals beside augmented versions, and the study's "sample images in HSV" view."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.colors import rgb_to_hsv
from matplotlib.figure import Figure  # no pyplot: no global state, no display backend

from covidxr.augment.ops import build_augment
from covidxr.data.dataset import Preprocess
from covidxr.data.manifest import Manifest
from covidxr.data.readers import read_image


def preview_grid(
    manifest: Manifest, ops: dict, out: Path, n_images: int = 4, n_versions: int = 5, size: int = 224, seed: int = 0
) -> tuple[Path, Path]:
    """Write `out` (originals + augmented versions) and `<out>_hsv.png`; returns both paths."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    records = [
        manifest.records[i]
        for i in rng.choice(len(manifest.records), min(n_images, len(manifest.records)), replace=False)
    ]
    pre = Preprocess(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    augment = build_augment(ops, size)
    rows = []
    for record in records:
        base = pre.to_unit_rgb(read_image(manifest.abspath(record)).pixels)
        versions = [augment(base.clone()) if augment else base for _ in range(n_versions)]
        rows.append((record, [base, *versions]))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _grid(rows, out, "original", lambda t: t.permute(1, 2, 0).numpy())
    hsv_out = out.with_name(out.stem + "_hsv.png")
    _grid(rows, hsv_out, "original (HSV)", lambda t: rgb_to_hsv(t.permute(1, 2, 0).clamp(0, 1).numpy()))
    return out, hsv_out


def _grid(rows: list, out: Path, first_title: str, to_array) -> None:
    n_cols = len(rows[0][1])
    fig = Figure(figsize=(2 * n_cols, 2 * len(rows)))
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, (record, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(np.clip(to_array(image), 0, 1))
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(first_title if c == 0 else f"augmented {c}", fontsize=8)
            if c == 0:
                ax.set_ylabel(record.label, fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
