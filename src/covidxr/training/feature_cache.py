"""Frozen-backbone fast path: compute backbone features once, store them on disk, memory-map them after.

The key covers everything the features depend on (backbone, weight origin, input size, normalisation, the
data set, the split, the augmentation config and copies, the seed), so a changed part means a new entry, and
an unchanged one is reused across runs. Entries are written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from covidxr.cache import cache_root
from covidxr.progress import progress

FEATURES_FILE = "features.npy"
META_FILE = "meta.json"


def default_cache_dir() -> Path:
    return cache_root() / "features"


def cache_key(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


@dataclass
class CachedFeatures:
    features: np.ndarray  # memory-mapped, (rows, width)
    rows: list[dict[str, Any]]  # one per feature row: path, copy, split, target
    key: str
    hit: bool

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
def extract(backbone: nn.Module, dataset: Dataset, batch_size: int, num_workers: int, desc: str) -> np.ndarray:
    """Pooled backbone features (or trunk outputs) for every item of `dataset`, in order, in eval mode."""
    backbone.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    chunks = []
    with progress(len(dataset) if isinstance(dataset, Sized) else 0, desc, "img") as bar:
        for x, _ in loader:
            chunks.append(backbone(x).float().contiguous().cpu().numpy())
            bar.update(len(x))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def load_or_compute(
    cache_dir: Path,
    key_parts: dict[str, Any],
    compute: Any,  # () -> (features ndarray, rows list)
) -> CachedFeatures:
    key = cache_key(key_parts)
    entry = Path(cache_dir) / key
    if (entry / META_FILE).is_file() and (entry / FEATURES_FILE).is_file():
        meta = json.loads((entry / META_FILE).read_text())
        return CachedFeatures(np.load(entry / FEATURES_FILE, mmap_mode="r"), meta["rows"], key, hit=True)
    features, rows = compute()
    tmp = entry.with_name(f".{key}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / FEATURES_FILE, features.astype(np.float32))
    (tmp / META_FILE).write_text(json.dumps({"key": key_parts, "rows": rows}))
    try:
        tmp.rename(entry)
    except OSError:  # another process wrote the same entry first: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    return CachedFeatures(np.load(entry / FEATURES_FILE, mmap_mode="r"), rows, key, hit=False)
