"""A lung model scored against the masks a data set ships: Dice per film after post-processing, with a patient
bootstrap CI, the flagged films, speed, and the worst films drawn as overlays."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from covidxr.atomic import write_json
from covidxr.data.manifest import Manifest, Record
from covidxr.data.readers import read_image
from covidxr.evaluation.bootstrap import patient_bootstrap
from covidxr.lungs import LungModel, dice
from covidxr.lungs.films import read_mask
from covidxr.results import SegmentationEvaluation, SegmentedFilm

METRICS_FILE = "lungs_metrics.json"
WORST_FILE = "lungs_worst.png"


def evaluate_segmenter(
    model: LungModel, manifest: Manifest, records: list[Record], out: Path | None = None, n_resamples: int = 1000,
    batch_size: int = 8, worst: int = 6,
) -> SegmentationEvaluation:  # fmt: skip
    """Dice of each film's cleaned mask against its shipped one; with `out`, the JSON and the worst overlays."""
    films, seconds = [], 0.0
    drawn: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        pixels = [read_image(manifest.root / r.path).pixels for r in batch]
        began = time.perf_counter()
        geometry = model.geometry(pixels)
        seconds += time.perf_counter() - began
        for r, px, g in zip(batch, pixels, geometry, strict=True):
            truth = read_mask(manifest.root, r, px.shape)
            films.append(SegmentedFilm(r.path, dice(g.mask, truth), g.area, g.flagged))
            drawn = sorted([*drawn, (films[-1].dice, px, g.mask, truth)], key=lambda d: d[0])[:worst]
    scores = np.array([f.dice for f in films])
    groups = np.array([r.group for r in records])
    ci = patient_bootstrap(lambda i: {"dice": float(scores[i].mean())}, groups, n_resamples)["dice"]
    result = SegmentationEvaluation(
        " + ".join(sorted({r.source for r in records})) or str(manifest.root), len(films), len(set(groups.tolist())),
        float(scores.mean()), list(ci), float(np.median(scores)), sum(f.flagged is not None for f in films),
        len(films) / seconds if seconds else float("nan"), films,
    )  # fmt: skip
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / METRICS_FILE, result.to_json())
        draw_overlays(out / WORST_FILE, drawn)
    return result


def draw_overlays(path: Path, films: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """Each film with its predicted outline (red) and the shipped mask's (green), titled with its Dice."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3 * max(len(films), 1), 3.4))
    for i, (score, px, predicted, truth) in enumerate(films):
        ax = fig.add_subplot(1, len(films), i + 1)
        ax.imshow(px, cmap="gray")
        ax.contour(truth, levels=[0.5], colors="lime", linewidths=1)
        ax.contour(predicted, levels=[0.5], colors="red", linewidths=1)
        ax.set_title(f"Dice {score:.3f}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
