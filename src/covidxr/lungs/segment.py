"""`covidxr lungs segment`: a mask PNG and an overlay per film, streamed in batches, with one CSV row per file.

An unreadable file gets a row with its reason and the job goes on; a flagged mask is still written, with the
reason in its row (later stages fall back to the whole film for it).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from covidxr.atomic import write_csv
from covidxr.data.readers import iter_image_files, read_image
from covidxr.errors import ImageReadError
from covidxr.lungs.geometry import LungGeometry
from covidxr.lungs.segmenter import LungModel

TABLE = "segment.csv"
COLUMNS = ("file", "mask", "overlay", "area", "box", "flagged", "error")


def overlay(pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The film in gray with its lungs tinted green (uint8 RGB)."""
    gray = (np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    rgb[mask, 1] = (rgb[mask, 1] * 0.5 + 127).astype(np.uint8)
    return rgb


def segment_files(model: LungModel, inputs: Iterable[Path], out: Path, batch_size: int = 8) -> list[dict[str, str]]:
    """Masks named `<stem>.png` (255 = lung) and `<stem>_overlay.png` in `out`, plus segment.csv."""
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        for (path, pixels), g in zip(batch, model.geometry([p for _, p in batch]), strict=True):
            rows.append(_write(out, path, pixels, g))
        batch.clear()
        write_csv(out / TABLE, COLUMNS, rows)  # after every batch: a killed job leaves what it finished listed

    for path in iter_image_files(inputs):
        try:
            batch.append((path, read_image(path).pixels))
        except ImageReadError as exc:
            rows.append(dict.fromkeys(COLUMNS, "") | {"file": str(path), "error": f"{exc.problem}: {exc}"})
        if len(batch) == batch_size:
            flush()
    flush()
    return rows


def _write(out: Path, path: Path, pixels: np.ndarray, g: LungGeometry) -> dict[str, str]:
    stem = path.stem
    mask_file, overlay_file = out / f"{stem}.png", out / f"{stem}_overlay.png"
    Image.fromarray(g.mask.astype(np.uint8) * 255).save(mask_file)
    Image.fromarray(overlay(pixels, g.mask)).save(overlay_file)
    box = " ".join(f"{v:.4f}" for v in g.box) if g.box else ""
    return {"file": str(path), "mask": mask_file.name, "overlay": overlay_file.name, "area": f"{g.area:.4f}",
            "box": box, "flagged": g.flagged or "", "error": ""}  # fmt: skip
