"""Per-film caches: a run that adds films extracts only those; films cut to their lungs are segmented once, in
batches, and epochs read the cut films from the film cache; a cached film is the film decoded now, bit for bit."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.data.film_cache import cached_films, film_store
from covidxr.data.prepare import usable_data
from covidxr.data.readers import read_image
from covidxr.lungs.segmenter import LungModel, SegmenterSpec, build_net, save_lung_model
from covidxr.training.job import train

pytestmark = pytest.mark.slow


def _subset_csv(phantoms: Path, out: Path, keep: int) -> Path:
    """The phantoms' labels.csv cut to its first `keep` rows, beside the images (paths stay relative)."""
    with (phantoms / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    with out.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[:keep])
    return out


def test_adding_films_extracts_only_the_new_ones(phantoms: Path, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    fewer = _subset_csv(phantoms, phantoms / "first-100.csv", 100)
    head = {"epochs": 1, "augment": "none", "cache_dir": cache}
    first = train(Config(DataConfig(paths=(str(fewer),)), TrainConfig(**head)), tmp_path / "a")  # type: ignore[arg-type]
    every = train(Config(DataConfig(paths=(str(phantoms),)), TrainConfig(**head)), tmp_path / "b")  # type: ignore[arg-type]
    again = train(Config(DataConfig(paths=(str(phantoms),), seed=5), TrainConfig(**head)), tmp_path / "c")  # type: ignore[arg-type]
    state = [__import__("json").loads((tmp_path / r / "state.json").read_text()) for r in "abc"]
    assert (first.cache_hit, every.cache_hit, again.cache_hit) == (False, False, True)  # a new split: all cached
    assert len({s["cache_key"] for s in state}) == 1
    films = next((tmp_path / "cache").glob("features-*"))
    rows = sum(np.load(p, mmap_mode="r").shape[0] for p in films.glob("chunk-*.npy"))
    assert rows == 120  # 100 extracted by the first run, the 20 new by the second, none twice


def test_lung_cut_films_are_segmented_once_in_batches_and_never_per_epoch(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = SegmenterSpec(input_size=64)
    (tmp_path / "lungs").mkdir()
    save_lung_model(tmp_path / "lungs", spec, build_net(spec)[0])  # untrained: most films fall back to themselves
    seen: list[int] = []
    geometry = LungModel.geometry
    monkeypatch.setattr(LungModel, "geometry", lambda self, films: seen.append(len(films)) or geometry(self, films))
    tc = TrainConfig(backbone="simple_cnn", weights="none", freeze="full", input_size=48, epochs=3, patience=3,
                     lung_model=str(tmp_path / "lungs"), lungs="crop", augment="none",
                     cache_dir=str(tmp_path / "c"))  # fmt: skip
    cfg = Config(DataConfig(paths=(str(phantoms),)), tc)
    run = train(cfg, tmp_path / "run")
    with (run.run_dir / "splits.csv").open() as fh:
        fitted = sum(r["split"] in ("train", "val") for r in csv.DictReader(fh))
    assert sum(seen) == fitted and max(seen) > 1  # each training and validation film once, in batches
    seen.clear()
    train(cfg, tmp_path / "again")
    assert seen == []  # the same geometry later: the cut films come from the cache

    manifest = usable_data(cfg.data)
    pre = run.spec.with_lungs(run.run_dir).preprocess
    store = film_store(tmp_path / "c", pre, run.spec.lung_model, cfg.data.max_pixels)
    rows = cached_films(store, manifest.root, manifest.records[:5], pre, cfg.data.max_pixels)
    for i, r in enumerate(manifest.records[:5]):
        decoded_now = pre.to_uint8(read_image(manifest.abspath(r), cfg.data.max_pixels).pixels)
        cached = rows.get(i)
        assert cached is not None
        np.testing.assert_array_equal(cached, decoded_now)
