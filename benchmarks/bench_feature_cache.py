"""Head training (freeze=head) for 20 epochs on cxr-dev: on cached backbone features vs recomputing the
backbone every epoch. Expect > 10x. Then the same one level up: `--freeze last-k` (k=1) on the cached trunk
output vs the full forward pass, per epoch.

The recompute side is timed for a few epochs and extrapolated to 20 (each epoch does the same work); the
cached side runs all 20 epochs, feature extraction included (cold cache), and again with a warm cache.
Usage: python benchmarks/bench_feature_cache.py [--data ../shared/data/cxr-dev] [--recompute-epochs 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result
from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.training.job import train

EPOCHS = 20
LAST_K = {"freeze": "last-k", "last_k": 1, "lr": 1e-4}


def timed_train(data: str, out: Path, cache: Path, **train_cfg: object) -> tuple[float, int]:
    cfg = Config(DataConfig(paths=(data,)), TrainConfig(cache_dir=str(cache), patience=EPOCHS, **train_cfg))  # type: ignore[arg-type]
    start = time.perf_counter()
    result = train(cfg, out)
    return time.perf_counter() - start, result.epochs_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("COVIDXR_CXR_DEV", "../shared/data/cxr-dev"))
    parser.add_argument("--recompute-epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cold, cold_epochs = timed_train(args.data, root / "cold", root / "cache", epochs=EPOCHS)
        warm, _ = timed_train(args.data, root / "warm", root / "cache", epochs=EPOCHS)
        n = args.recompute_epochs
        recompute, _ = timed_train(args.data, root / "recompute", root / "none", epochs=n, feature_cache=False)
        trunk_cold, _ = timed_train(args.data, root / "lk-cold", root / "cache", epochs=EPOCHS, **LAST_K)
        trunk_warm, trunk_epochs = timed_train(args.data, root / "lk-warm", root / "cache", epochs=EPOCHS, **LAST_K)
        full, _ = timed_train(args.data, root / "lk-full", root / "none", epochs=n, feature_cache=False, **LAST_K)
    per_epoch = recompute / n  # includes one-off start-up, so the extrapolation slightly overstates recompute
    recompute_20 = per_epoch * EPOCHS
    write_result(
        "feature_cache",
        {
            "target": "> 10x for 20 head-training epochs",
            "backbone": "tf_efficientnet_lite0 (bundled ImageNet weights), augment xray, 1 copy",
            "epochs": EPOCHS,
            "cached_cold_s": round(cold, 1),
            "cached_warm_s": round(warm, 1),
            "cached_epochs_run": cold_epochs,
            "recompute_measured_epochs": n,
            "recompute_measured_s": round(recompute, 1),
            "recompute_20_epochs_s_extrapolated": round(recompute_20, 1),
            "speedup_cold": round(recompute_20 / cold, 1),
            "speedup_warm": round(recompute_20 / warm, 1),
            "last_k": {
                "freeze": "last-k, k = 1 (conv_head + bn2 train with the head)",
                "cached_cold_s": round(trunk_cold, 1),
                "cached_warm_s": round(trunk_warm, 1),
                "cached_epochs_run": trunk_epochs,
                "cached_s_per_epoch_warm": round(trunk_warm / trunk_epochs, 2),
                "full_forward_measured_epochs": n,
                "full_forward_s_per_epoch": round(full / n, 1),
                "speedup_per_epoch": round((full / n) / (trunk_warm / trunk_epochs), 1),
            },
        },
    )


if __name__ == "__main__":
    main()
