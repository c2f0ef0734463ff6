"""Near-duplicate films by their difference hashes, without comparing every pair."""

from __future__ import annotations

import itertools

import numpy as np


def near_pairs(hashes: np.ndarray, limit: int) -> list[tuple[int, int, int]]:
    """(i, j, distance) for i < j whose packed hashes differ in at most `limit` bits, in (i, j) order. Two such
    hashes agree exactly on at least one of `limit + 1` bands (pigeonhole), so only hashes sharing a band's value
    are compared, group sizes at a time and vectorised: far fewer comparisons than every pair, which grow with
    the square of the films."""
    if len(hashes) < 2:
        return []
    bits = np.unpackbits(hashes, axis=1)
    edges = np.linspace(0, bits.shape[1], limit + 2).astype(int)
    words = _as_words(hashes)
    found: dict[tuple[int, int], int] = {}
    for lo, hi in itertools.pairwise(edges):
        values = bits[:, lo:hi].astype(np.int64) @ (np.int64(1) << np.arange(hi - lo, dtype=np.int64))
        order = np.argsort(values, kind="stable")
        starts = np.flatnonzero(np.r_[True, values[order][1:] != values[order][:-1]])
        sizes = np.diff(np.r_[starts, len(order)])
        for size in np.unique(sizes[sizes > 1]):
            groups = np.sort(order[starts[sizes == size][:, None] + np.arange(size)], axis=1)
            a, b = np.triu_indices(int(size), 1)
            first, second = groups[:, a].ravel(), groups[:, b].ravel()
            for k in range(0, len(first), 1 << 20):  # about 1M pairs at a time: memory stays flat
                i, j = first[k : k + (1 << 20)], second[k : k + (1 << 20)]
                distance = _popcount(words[i] ^ words[j])
                for x, y, d in zip(
                    i[distance <= limit], j[distance <= limit], distance[distance <= limit], strict=True
                ):
                    found[(int(x), int(y))] = int(d)
    return [(i, j, d) for (i, j), d in sorted(found.items())]


def _as_words(hashes: np.ndarray) -> np.ndarray:
    """Packed hashes as 64-bit words (padded with zero bytes), for a popcount a word at a time."""
    pad = (-hashes.shape[1]) % 8
    padded = np.pad(hashes, ((0, 0), (0, pad))) if pad else np.ascontiguousarray(hashes)
    return padded.view(np.uint64)


def _popcount(words: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words).sum(axis=1).astype(np.int64)
    return np.unpackbits(words.view(np.uint8), axis=1).sum(axis=1).astype(np.int64)
