"""Each film's own lungs for lung-restricted input (data.dataset.Preprocess): the lung model's cleaned mask and
crop box, cached by the film's content, since training, evaluation and the audit meet the same film many times."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from covidxr.data.lungs import Box
from covidxr.lungs.geometry import LungGeometry
from covidxr.lungs.segmenter import LungModel

CACHED_FILMS = 2048  # masks kept as packed bits: ~20 KB a film at 384 px


class LungView:
    """Callable film -> (mask or None when flagged, crop box): the `LungFinder` a Preprocess takes."""

    def __init__(self, model: LungModel, cached: int = CACHED_FILMS) -> None:
        self.model, self.cached = model, cached
        self._cache: OrderedDict[bytes, tuple[bytes | None, tuple[int, int], Box]] = OrderedDict()
        self._lock = threading.Lock()
        self.flagged = 0  # films that fell back to themselves

    def geometry(self, pixels: np.ndarray) -> LungGeometry:
        return self.model.geometry([pixels])[0]

    def prime(self, films: Sequence[np.ndarray]) -> None:
        """Find the lungs of many films in one batch (on the placement's device), so the calls that follow hit."""
        for key, g in zip(map(_key, films), self.model.geometry(list(films)), strict=True):
            self._keep(key, g)

    def _keep(self, key: bytes, g: LungGeometry) -> tuple[bytes | None, tuple[int, int], Box]:
        packed = np.packbits(g.mask).tobytes() if g.plausible else None
        hit = (packed, g.mask.shape, g.crop_box())
        with self._lock:
            self.flagged += not g.plausible
            self._cache[key] = hit
            while len(self._cache) > self.cached:
                self._cache.popitem(last=False)
        return hit

    def __call__(self, pixels: np.ndarray) -> tuple[np.ndarray | None, Box]:
        key = _key(pixels)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        if hit is None:
            hit = self._keep(key, self.geometry(pixels))
        packed, shape, box = hit
        if packed is None:
            return None, box
        n = shape[0] * shape[1]
        return np.unpackbits(np.frombuffer(packed, np.uint8), count=n).reshape(shape).astype(bool), box


def _key(pixels: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16).digest() + bytes(
        str(pixels.shape), "ascii"
    )
