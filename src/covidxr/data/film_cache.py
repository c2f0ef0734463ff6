"""Each film decoded and cut once per run geometry: 8-bit films at the network's input size, kept on disk.

The key is everything that changes the pixels (input size, resize mode, border crop, equalisation, lung box, lung
cut and the lung model's identity, the decoding limit); a row is one film, found by its content hash, so a run that
adds or re-splits films decodes only the new ones, and training epochs, evaluation and later runs read the same
rows. Where a run cuts films to their own lungs, the lung model sees the films in batches on the run's device while
the cache fills, never again per epoch or per loader worker.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch.utils.data import DataLoader, Dataset

from covidxr.data.dataset import Preprocess
from covidxr.data.manifest import Record
from covidxr.data.readers import read_image
from covidxr.progress import progress
from covidxr.store import CHUNK_ROWS, RowStore, enforce_cap

LUNG_BATCH = 16  # films segmented at once while the cache fills (full-size films travel from the workers)


class BatchFinder(Protocol):
    """A lung finder that can look at many films at once (lungs.LungView)."""

    def prime(self, films: Sequence[np.ndarray]) -> None: ...


class FilmRows:
    """Where each record's 8-bit film lies (chunk file, row), or None: picklable, so loader workers open the
    chunks themselves (memory-mapped, once per process)."""

    def __init__(self, locations: Sequence[tuple[str, int] | None]) -> None:
        self.locations = list(locations)
        self._open: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {"locations": self.locations, "_open": {}}

    def get(self, i: int) -> np.ndarray | None:
        where = self.locations[i]
        if where is None:
            return None
        path, row = where
        if path not in self._open:
            self._open[path] = np.load(path, mmap_mode="r")
        return np.array(self._open[path][row])  # a copy: the chunk is mapped read-only

    @property
    def hits(self) -> int:
        return sum(w is not None for w in self.locations)


def film_store(cache_dir: Path, pre: Preprocess, lung_model: str | None, max_pixels: int) -> RowStore:
    key = pre.pixel_key() | {"lung_model": lung_model if pre.lungs != "none" else None, "max_pixels": max_pixels}
    return RowStore(cache_dir, "films", key)


def cached_films(
    store: RowStore, root: Path, records: Sequence[Record], pre: Preprocess, max_pixels: int, workers: int = 0
) -> FilmRows:
    """Every record's film in the store (the missing ones decoded and cut now, in chunks), and where each lies.
    Records without a content hash (listed, never checked) are left to be decoded where they are read."""
    todo = {r.film: r for r in records if r.film is not None and r.film not in store}
    if todo:
        fill(store, root, list(todo.values()), pre, max_pixels, workers)
        enforce_cap(store.folder.parent, keep=store.folder)
    return FilmRows(store.locations([r.film or "" for r in records]))


def fill(store: RowStore, root: Path, records: list[Record], pre: Preprocess, max_pixels: int, workers: int) -> None:
    finder = pre.finder if pre.lungs != "none" else None
    with progress(len(records), "films", "img") as bar:
        for keys, rows in _chunks(root, records, pre, max_pixels, workers, finder):
            store.add(keys, np.stack(rows))
            bar.update(len(keys))


def _chunks(
    root: Path, records: list[Record], pre: Preprocess, max_pixels: int, workers: int, finder: Any
) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """(film keys, 8-bit films) a chunk at a time: decoded (and cut, without lungs) in loader workers; with
    lungs, the workers decode and this process finds the lungs of a batch at once, then cuts."""
    keys: list[str] = []
    rows: list[np.ndarray] = []
    if finder is None:
        items: Dataset = _Decoded(root, records, max_pixels, pre)
        batch = CHUNK_ROWS
    else:
        items, batch = _Decoded(root, records, max_pixels, None), LUNG_BATCH
    loader = DataLoader(items, batch_size=batch, num_workers=workers, collate_fn=list)
    for group in loader:
        if finder is not None:
            finder.prime([px for _, px in group])
            group = [(k, pre.to_uint8(px)) for k, px in group]
        for key, gray8 in group:
            keys.append(key)
            rows.append(gray8)
        if len(keys) >= CHUNK_ROWS:
            yield keys, rows
            keys, rows = [], []
    if keys:
        yield keys, rows


class _Decoded(Dataset):
    """(film key, 8-bit film) with a Preprocess, else (film key, decoded film) for the lung finder."""

    def __init__(self, root: Path, records: list[Record], max_pixels: int, pre: Preprocess | None) -> None:
        self.root, self.records, self.max_pixels, self.pre = Path(root), records, max_pixels, pre

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray]:
        r = self.records[i]
        pixels = read_image(self.root / r.path, self.max_pixels).pixels
        return r.film or "", self.pre.to_uint8(pixels) if self.pre is not None else pixels
