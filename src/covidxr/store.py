"""A persistent store of array rows keyed by strings (a film's hash, a film's copy), in chunk files.

What the film cache and the feature cache are built on. A store is one folder per key (everything that changes
the rows: preprocessing, backbone, weights); its `key.json` is checked when it is opened, and a store whose key
differs is refused. Rows are added in chunks, each written whole (temporary file, then rename; its row keys last,
as the commit mark), so a process killed at any point (kill -9 included) loses at most the chunk it was writing,
and the next run computes only the rows no chunk holds. Reads memory-map the chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from covidxr.atomic import write_json
from covidxr.errors import CovidxrError

KEY_FILE = "key.json"
CHUNK_ROWS = 256  # rows per chunk: what a kill loses at most, and the unit of memory while a store fills
DEFAULT_CAP_GB = 50.0  # $COVIDXR_CACHE_MAX_GB: stores used least recently go first beyond it


def key_digest(parts: dict[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class RowStore:
    """Rows of one kind under one key: `missing(keys)`, `add(keys, rows)`, `gather(keys)`."""

    def __init__(self, parent: Path, kind: str, key: dict[str, Any]) -> None:
        self.key = key_digest(key)
        self.folder = Path(parent) / f"{kind}-{self.key}"
        self.folder.mkdir(parents=True, exist_ok=True)
        key_file = self.folder / KEY_FILE
        if key_file.is_file():
            try:
                stored = json.loads(key_file.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise CovidxrError(
                    f"{key_file}: unreadable cache key ({exc}); `covidxr cache clear` removes it"
                ) from None
            if stored != json.loads(json.dumps(key, default=str)):
                raise CovidxrError(f"{self.folder}: its key.json does not match what is asked; not used "
                                   "(`covidxr cache clear` removes it)")  # fmt: skip
        else:
            write_json(key_file, key)
        os.utime(key_file)  # the store's last use, for the size cap
        self._index: dict[str, tuple[str, int]] = {}
        self._chunks: dict[str, np.ndarray] = {}
        self.refresh()

    def refresh(self) -> None:
        """Index the committed chunks (another process may have added some)."""
        for keys_file in sorted(self.folder.glob("chunk-*.keys.json")):
            name = keys_file.name[: -len(".keys.json")]
            if name in self._chunks:  # already indexed
                continue
            try:
                keys = json.loads(keys_file.read_text())
            except (OSError, json.JSONDecodeError):
                continue  # being replaced: its rows are computed again if asked
            for i, k in enumerate(keys):
                self._index.setdefault(k, (name, i))
            self._chunks[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def missing(self, keys: Sequence[str]) -> list[str]:
        return [k for k in dict.fromkeys(keys) if k not in self._index]

    def add(self, keys: Sequence[str], rows: np.ndarray) -> None:
        """One chunk written whole; its keys file, written last, commits it."""
        if len(keys) != len(rows):
            raise ValueError(f"{len(keys)} keys for {len(rows)} rows")
        if not len(keys):
            return
        name = f"chunk-{time.time_ns():x}-{os.getpid()}"
        tmp = self.folder / f".{name}.npy.tmp"
        with tmp.open("wb") as fh:
            np.save(fh, np.ascontiguousarray(rows))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.folder / f"{name}.npy")
        write_json(self.folder / f"{name}.keys.json", list(keys))
        self._chunks[name] = np.load(self.folder / f"{name}.npy", mmap_mode="r")
        for i, k in enumerate(keys):
            self._index.setdefault(k, (name, i))

    def row(self, key: str) -> np.ndarray:
        name, i = self._index[key]
        return np.asarray(self._chunks[name][i])

    def gather(self, keys: Sequence[str]) -> np.ndarray:
        """The rows of `keys`, in that order, as one in-memory array (each chunk read once)."""
        if not keys:
            return np.zeros((0,), np.float32)
        first = self._chunks[self._index[keys[0]][0]]
        out = np.empty((len(keys), *first.shape[1:]), first.dtype)
        by_chunk: dict[str, tuple[list[int], list[int]]] = {}
        for j, k in enumerate(keys):
            name, i = self._index[k]
            dest, src = by_chunk.setdefault(name, ([], []))
            dest.append(j)
            src.append(i)
        for name, (dest, src) in by_chunk.items():
            out[dest] = self._chunks[name][src]
        return out

    def locations(self, keys: Sequence[str]) -> list[tuple[str, int] | None]:
        """(chunk file, row) per key, None where not stored: what a worker process opens by itself."""
        return [
            (str(self.folder / f"{self._index[k][0]}.npy"), self._index[k][1]) if k in self._index else None
            for k in keys
        ]


def store_sizes(parent: Path) -> list[tuple[Path, int, float]]:
    """(store folder, bytes, last use) for every store under `parent`, least recently used first."""
    rows = []
    for folder in Path(parent).glob("*-*"):
        if folder.is_dir() and (folder / KEY_FILE).is_file():
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            rows.append((folder, size, (folder / KEY_FILE).stat().st_mtime))
    return sorted(rows, key=lambda r: r[2])


def enforce_cap(parent: Path, keep: Path, cap_gb: float | None = None) -> list[Path]:
    """Remove the least recently used stores (never `keep`) until the folder fits the cap; returns them."""
    cap = float(os.environ.get("COVIDXR_CACHE_MAX_GB", DEFAULT_CAP_GB)) if cap_gb is None else cap_gb
    stores = store_sizes(parent)
    total = sum(s for _, s, _ in stores)
    removed = []
    for folder, size, _ in stores:
        if total <= cap * 1e9:
            break
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)
            total -= size
            removed.append(folder)
    return removed
