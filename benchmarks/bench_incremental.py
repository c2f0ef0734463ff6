"""Adding 5% new films to a cached run extracts only those: seconds of feature extraction for the grown set with
the earlier run's cache vs a fresh extraction of the same grown set (target <= 0.1x).

Phantoms (the default head recipe: Lite0, one augmented copy of each training film). Run A trains on the first
95% of the films (cold cache); run B on all of them with A's cache; run C on all of them with an empty cache.
The seconds are train()'s wall time minus its training loop (history.csv), i.e. checking, splitting, filling the
film cache and extracting.

Usage: python -m benchmarks.bench_incremental [--films 600]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result
from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.data.synth import generate
from covidxr.training.job import train


def _first_rows(labels: Path, n: int) -> Path:
    out = labels.with_name(f"first-{n}.csv")
    with labels.open(newline="") as fh:
        rows = list(csv.reader(fh))
    with out.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows[: n + 1])
    return out


def timed(data: Path, cache: Path, out: Path) -> tuple[float, int]:
    start = time.perf_counter()
    result = train(Config(DataConfig(paths=(str(data),)), TrainConfig(cache_dir=str(cache))), out)
    with (out / "history.csv").open() as fh:
        loop = sum(float(r["seconds"]) for r in csv.DictReader(fh))
    return time.perf_counter() - start - loop, result.epochs_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--films", type=int, default=600)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        labels = generate(root / "ph", n=args.films, seed=5)
        first = _first_rows(labels, round(args.films * 0.95))
        base, _ = timed(first, root / "cache", root / "a")
        grown, _ = timed(labels, root / "cache", root / "b")
        fresh, _ = timed(labels, root / "fresh", root / "c")
    write_result("incremental", {
        "films": args.films, "added": args.films - round(args.films * 0.95),
        "first_run_s": round(base, 1), "grown_with_cache_s": round(grown, 1), "grown_fresh_s": round(fresh, 1),
        "ratio": round(grown / fresh, 3), "target": "<= 0.1x",
    })  # fmt: skip


if __name__ == "__main__":
    main()
