"""Grid search on cxr-dev, a 36-point head grid (1 backbone x 3 lr x 3 batch x 2 optimizers x 2 dropouts):

1. with the feature cache (backbone features extracted once, reused by every trial) vs the same grid
   re-extracting features in every trial (a few trials measured with a fresh cache each, extrapolated to 36);
   the re-extracted trials must land on the same validation F1 as their cached twins (same ranking).
   Target: >= 20x.
2. two local workers vs one on the same grid (warm cache): wall-time ratio.

Usage: python benchmarks/bench_search.py [--data ../shared/data/cxr-dev] [--measure 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result
from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.search.grid import apply_params, grid_points
from covidxr.search.job import search
from covidxr.search.leaderboard import run_row
from covidxr.training.job import train

GRID = {
    "lr": [0.001, 0.0003, 0.0001],
    "batch_size": [8, 16, 32],
    "optimizer": ["adam", "sgd"],
    "dropout": [0.3, 0.5],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("COVIDXR_CXR_DEV", "../shared/data/cxr-dev"))
    parser.add_argument("--measure", type=int, default=2, help="re-extracting trials to time")
    args = parser.parse_args()
    points = grid_points(GRID)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = Config(DataConfig(paths=(args.data,)), TrainConfig(cache_dir=str(root / "cache")))
        start = time.perf_counter()
        cached = search(cfg, GRID, root / "cached", n_resamples=200)
        cached_s = time.perf_counter() - start
        by_point = {(r["lr"], r["batch_size"], r["optimizer"], r["dropout"]): r for r in cached.rows}

        recompute_s, same = [], []
        for i, params in enumerate(points[: args.measure]):
            fresh = apply_params(cfg, params)
            fresh.train.cache_dir = str(root / f"fresh-cache-{i}")
            run_dir = root / f"recompute-{i}"
            run_dir.mkdir()
            (run_dir / "splits.csv").write_bytes((root / "cached" / "splits.csv").read_bytes())
            start = time.perf_counter()
            train(fresh, run_dir)
            recompute_s.append(time.perf_counter() - start)
            twin = by_point[tuple(params[k] for k in ("lr", "batch_size", "optimizer", "dropout"))]
            same.append(abs(run_row(run_dir)["val_f1"] - twin["val_f1"]) < 1e-9)

        timings = {}
        for workers in (1, 2):
            start = time.perf_counter()
            search(cfg, GRID, root / f"workers-{workers}", workers=workers, n_resamples=200)
            timings[workers] = time.perf_counter() - start
    per_trial = sum(recompute_s) / len(recompute_s)
    extrapolated = per_trial * len(points)
    write_result(
        "search",
        {
            "grid_points": len(points),
            "backbone": "tf_efficientnet_lite0, freeze head, 20 epochs, early stopping",
            "cached_search_s": round(cached_s, 1),
            "recompute_trials_measured": len(recompute_s),
            "recompute_seconds_per_trial": round(per_trial, 1),
            "recompute_search_s_extrapolated": round(extrapolated, 1),
            "speedup": round(extrapolated / cached_s, 1),
            "speedup_target": 20,
            "same_val_f1_as_cached_twin": all(same),
            "note": "cached_search_s includes the one feature extraction and the winner's test evaluation",
            "workers_1_s": round(timings[1], 1),
            "workers_2_s": round(timings[2], 1),
            "workers_2_vs_1_speedup": round(timings[1] / timings[2], 2),
            "top_of_leaderboard": [
                {k: r[k] for k in ("lr", "batch_size", "optimizer", "dropout", "val_f1", "val_auc")}
                for r in cached.rows[:5]
            ],
        },
    )


if __name__ == "__main__":
    main()
