"""What keeps large sets affordable: the near-duplicate search by bands finds exactly the pairs a comparison of
every pair finds; the patient bootstrap by counts draws the same rows as by lists; cores come from the affinity and
the cgroup quota; large phantom sets are small films in sharded folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from covidxr.data.duplicates import near_pairs
from covidxr.evaluation.bootstrap import patient_bootstrap
from covidxr.threads import cgroup_quota, loader_workers, usable_cores


def _every_pair(hashes: np.ndarray, limit: int) -> list[tuple[int, int, int]]:
    out = []
    for i in range(len(hashes)):
        d = np.unpackbits(hashes[i + 1 :] ^ hashes[i], axis=1).sum(axis=1)
        out += [(i, i + 1 + int(j), int(d[j])) for j in np.flatnonzero(d <= limit)]
    return out


@pytest.mark.parametrize("limit", [0, 3, 10])
def test_near_duplicates_by_bands_are_exactly_those_of_every_pair(limit: int) -> None:
    rng = np.random.default_rng(limit)
    hashes = rng.integers(0, 256, (1500, 32), dtype=np.uint8)
    for _ in range(80):  # copies a few bits apart, some just past the limit
        i, j = rng.integers(0, len(hashes), 2)
        hashes[j] = hashes[i]
        for bit in rng.choice(256, int(rng.integers(0, limit + 3)), replace=False):
            hashes[j, bit // 8] ^= np.uint8(1 << (7 - bit % 8))
    found = near_pairs(hashes, limit)
    assert found == _every_pair(hashes, limit) and len(found) > 10


def test_the_bootstrap_by_counts_gives_the_intervals_of_the_lists_of_rows() -> None:
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 60, 400).astype(str)
    values = rng.random(400)
    by_counts = patient_bootstrap(lambda i: {"m": float(values[i].mean())}, groups, 300, seed=4)["m"]
    unique, inverse = np.unique(groups, return_inverse=True)
    rows_of = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    draw = np.random.default_rng(4)
    means = [values[np.concatenate([rows_of[g] for g in draw.integers(0, len(unique), len(unique))])].mean()
             for _ in range(300)]  # fmt: skip
    assert by_counts == pytest.approx((np.percentile(means, 2.5), np.percentile(means, 97.5)), abs=1e-12)


def test_cores_follow_the_cgroup_quota_and_the_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v2 = tmp_path / "cpu.max"
    v2.write_text("150000 100000\n")
    assert cgroup_quota(v2, (tmp_path / "none", tmp_path / "none")) == 1.5
    v2.write_text("max 100000\n")
    assert cgroup_quota(v2, (tmp_path / "none", tmp_path / "none")) is None
    quota, period = tmp_path / "quota", tmp_path / "period"
    quota.write_text("200000")
    period.write_text("100000")
    assert cgroup_quota(tmp_path / "none", (quota, period)) == 2.0
    monkeypatch.setenv("COVIDXR_THREADS", "3")
    usable_cores.cache_clear()
    try:
        assert usable_cores() == 3 and loader_workers() == 2 and loader_workers(5) == 5
    finally:
        monkeypatch.delenv("COVIDXR_THREADS")
        usable_cores.cache_clear()


def test_large_phantom_sets_are_small_films_in_sharded_folders(tmp_path: Path) -> None:
    from PIL import Image

    from covidxr.data.synth import _shard, generate

    labels = generate(tmp_path / "ph", n=12, seed=2, size=48)
    films = sorted((tmp_path / "ph" / "images").rglob("*.png"))
    assert len(films) == 12 and all(48 <= Image.open(f).size[1] < 69 for f in films)
    assert labels.read_text().count("\n") == 13
    assert _shard(2500, 100_000) == "002" and _shard(2500, 400) == ""
