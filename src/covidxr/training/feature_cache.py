"""Frozen-backbone fast path: each film's backbone features (or trunk outputs) computed once and kept on disk.

The store's key is everything a film's features depend on besides the film (backbone, weights, input size,
normalisation, every preprocessing step that changes the pixels, the level cut); a row is one film by its
content hash, or one augmented copy of it by (film, copy, augmentation and seed). A run that adds films, or
splits them anew, extracts only the rows no earlier run stored. Films come from the film cache (data.film_cache),
features are computed on the run's device (covidxr.device).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from covidxr.augment import build_augment, preset
from covidxr.cache import cache_root
from covidxr.config import Config, TrainConfig
from covidxr.data.dataset import XrayDataset
from covidxr.data.film_cache import cached_films, film_store
from covidxr.data.labels import LabelMap
from covidxr.data.manifest import Record
from covidxr.data.prepare import PreparedData
from covidxr.device import current, use
from covidxr.errors import CovidxrError
from covidxr.models.spec import ModelSpec
from covidxr.progress import progress
from covidxr.store import RowStore, enforce_cap, key_digest


def default_cache_dir() -> Path:
    return cache_root() / "features"


def cache_folder(tc: TrainConfig) -> Path:
    """Where a run's film and feature stores live: --cache-dir, else the default."""
    return Path(tc.cache_dir) if tc.cache_dir else default_cache_dir()


@dataclass
class CachedFeatures:
    features: np.ndarray  # (rows, width ...), in memory
    rows: list[dict[str, Any]]  # one per feature row: path, copy, split, target
    key: str  # the store's key
    hit: bool  # nothing had to be computed

    def _index(self, split: str, with_copies: bool) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r["split"] == split and (with_copies or r["copy"] == 0)]

    def rows_of(self, split: str, with_copies: bool) -> list[dict[str, Any]]:
        """The row (path, copy, split, target) of each feature row `select` returns, in the same order."""
        return [self.rows[i] for i in self._index(split, with_copies)]

    def select(self, split: str, with_copies: bool) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self._index(split, with_copies)
        x = torch.from_numpy(np.ascontiguousarray(self.features[idx]))
        y = torch.tensor([self.rows[i]["target"] for i in idx])
        return x, y


@torch.no_grad()
def extract_batches(
    backbone: nn.Module, dataset: Dataset, batch_size: int, num_workers: int, desc: str
) -> Iterator[np.ndarray]:
    """Pooled backbone features (or trunk outputs) of the items of `dataset`, in order, a batch at a time, in
    eval mode, on the placement's device."""
    place = current().stage("extract")
    backbone = place.module(backbone).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=place.pin_memory)  # fmt: skip
    with progress(len(dataset) if isinstance(dataset, Sized) else 0, desc, "img") as bar:
        for x, _ in loader:
            yield place.forward(backbone, x).contiguous().numpy()
            bar.update(len(x))


def extract(backbone: nn.Module, dataset: Dataset, batch_size: int, num_workers: int, desc: str) -> np.ndarray:
    chunks = list(extract_batches(backbone, dataset, batch_size, num_workers, desc))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def extract_into(store: RowStore, keys: list[str], backbone: nn.Module, dataset: Dataset, tc: Any, desc: str) -> None:
    """Features stored as they come, about 64 MB a chunk: a killed extraction keeps what it stored."""
    pending: list[np.ndarray] = []
    done = 0
    for batch in extract_batches(backbone, dataset, tc.batch_size, tc.num_workers, desc):
        pending.append(batch)
        rows = sum(len(p) for p in pending)
        if rows * batch[0].nbytes >= 64 << 20:
            store.add(keys[done : done + rows], np.concatenate(pending).astype(np.float32))
            done, pending = done + rows, []
    if pending:
        store.add(keys[done:], np.concatenate(pending).astype(np.float32))


def feature_store(cache_dir: Path, spec: ModelSpec, level: str, seed: int) -> RowStore:
    key = {
        "backbone": spec.backbone,
        "weights": spec.weights,
        "weights_sha256": spec.weights_sha256,
        "seed": seed if spec.weights == "none" else None,  # a randomly initialised backbone depends on it
        "input_size": spec.input_size,
        "mean": spec.mean,
        "std": spec.std,
        "channels": spec.channels,
        "pixels": spec.preprocess.pixel_key() | {"lung_model": spec.lung_model if spec.lungs != "none" else None},
        "level": level,
    }
    return RowStore(cache_dir, "features", key)


def cached_features(
    cfg: Config, prepared: PreparedData, extractor: nn.Module, spec: ModelSpec, level: str
) -> CachedFeatures:
    """Outputs of the frozen `extractor` for every film and the augmented training copies: rows already stored
    are read, only the others computed (on the run's device), then all gathered in the run's order."""
    tc = cfg.train
    manifest, split, lm = prepared.manifest, prepared.split, prepared.label_map
    if any(r.film is None for r in manifest.records):
        raise CovidxrError("the feature cache needs checked data (each film's content hash): prepare them first")
    ops = preset(tc.augment, tc.augment_ops)
    copies = tc.augment_copies if ops else 0
    cache_dir = cache_folder(tc)
    store = feature_store(cache_dir, spec, level, cfg.data.seed)
    variant = key_digest({"augment": ops, "seed": cfg.data.seed})
    train = split.records(manifest, "train")
    wanted = [(r, 0) for r in manifest.records] + [(r, k) for k in range(1, copies + 1) for r in train]
    keys = [_row_key(r, k, variant) for r, k in wanted]
    missing = set(store.missing(keys))
    with use(tc.accelerator, tc.precision, tc.devices):
        if missing:
            _compute(store, cfg, prepared, extractor, spec, missing, copies, variant)
    enforce_cap(cache_dir, keep=store.folder)
    rows = [{"path": r.path, "copy": k, "split": split.assignment[r.path] if k == 0 else "train",
             "target": lm.encode(r.label)} for r, k in wanted]  # fmt: skip
    return CachedFeatures(store.gather(keys), rows, store.key, hit=not missing)


def _row_key(record: Record, copy: int, variant: str) -> str:
    return f"{record.film}" if copy == 0 else f"{record.film}/{copy}/{variant}"


def extract_films(
    store: RowStore, extractor: nn.Module, spec: ModelSpec, root: Path, records: list[Record], label_map: LabelMap,
    tc: TrainConfig, max_pixels: int,
) -> None:  # fmt: skip
    """The rows of `records`' films (originals) that `store` lacks, extracted from the film cache (filled first
    with whatever films it lacks) on the current placement, stored a chunk at a time."""
    missing = set(store.missing([r.film or "" for r in records]))
    todo = list({r.film: r for r in records if r.film in missing}.values())
    if not todo:
        return
    films = film_store(cache_folder(tc), spec.preprocess, spec.lung_model, max_pixels)
    rows = cached_films(films, root, todo, spec.preprocess, max_pixels, tc.num_workers)
    data = XrayDataset(root, todo, label_map, spec.preprocess, max_pixels=max_pixels, films=rows)
    extract_into(store, [r.film or "" for r in todo], extractor, data, tc, "features")


def _compute(
    store: RowStore, cfg: Config, prepared: PreparedData, extractor: nn.Module, spec: ModelSpec, missing: set[str],
    copies: int, variant: str,
) -> None:  # fmt: skip
    """The missing rows: originals of any split, then augmented copies of training films, each from the film
    cache, stored a chunk at a time."""
    tc, manifest, lm = cfg.train, prepared.manifest, prepared.label_map
    root, pre, max_px = manifest.root, spec.preprocess, cfg.data.max_pixels
    extract_films(store, extractor, spec, root, manifest.records, lm, tc, max_px)
    train = prepared.split.records(manifest, "train")
    augmented = list({r.film: r for r in train if any(_row_key(r, k, variant) in missing
                                                       for k in range(1, copies + 1))}.values())  # fmt: skip
    if augmented:
        films = film_store(cache_folder(tc), pre, spec.lung_model, max_px)
        located = cached_films(films, root, augmented, pre, max_px, tc.num_workers)
        ops = preset(tc.augment, tc.augment_ops)
        data = XrayDataset(root, augmented, lm, pre, build_augment(ops, spec.input_size), max_px, copies=copies,
                           seed=cfg.data.seed, films=located)  # fmt: skip
        m = len(augmented)
        order = [(k, i) for k in range(1, copies + 1) for i in range(m)]
        todo = [j for j, (k, i) in enumerate(order) if _row_key(augmented[i], k, variant) in missing]
        keys = [_row_key(augmented[order[j][1]], order[j][0], variant) for j in todo]
        extract_into(store, keys, extractor, Subset(data, [m + j for j in todo]), tc, "augmented features")
