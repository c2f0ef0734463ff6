"""Run a trained network over manifest records: per-image class scores, optionally through an image transform
(the lung occlusion of the audit plugs in here, on the [0, 1] image before normalisation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from covidxr.data.dataset import Transform, XrayDataset
from covidxr.data.film_cache import FilmRows
from covidxr.data.labels import LabelMap
from covidxr.data.manifest import Record
from covidxr.device import current
from covidxr.models.spec import ModelSpec
from covidxr.progress import progress


@torch.no_grad()
def predict_logits(
    net: torch.nn.Module,
    spec: ModelSpec,
    root: Path,
    records: Sequence[Record],
    label_map: LabelMap,
    transform: Transform | None = None,
    batch_size: int = 32,
    films: FilmRows | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(raw logits (N, C), targets (N,)) in record order, in eval mode, on the placement's device; `films`: where
    the film cache holds them (the others are decoded). `spec.scores` turns logits into scores."""
    place = current().stage("score")
    net = place.module(net).eval()
    dataset = XrayDataset(root, records, label_map, spec.preprocess, augment=transform, films=films)
    logits, targets = [], []
    with progress(len(dataset), "scoring", "img") as bar:
        for x, y in DataLoader(dataset, batch_size=batch_size, pin_memory=place.pin_memory):
            logits.append(place.forward(net, x).numpy())
            targets.append(y.numpy())
            bar.update(len(y))
    if not logits:
        return np.zeros((0, spec.num_outputs)), np.zeros(0, dtype=int)
    return np.concatenate(logits), np.concatenate(targets)
