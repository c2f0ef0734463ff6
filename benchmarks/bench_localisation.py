"""Where and how the CAM is taken, measured on phantoms (lesions and lungs known) with the demo's run.

For each candidate layer of the backbone and CAM method (pytorch-grad-cam's gradient methods): the pointing
game on true positives (the CAM's maximum within 15 px of the lesion, against a random point's hit rate) and the
share of CAM energy inside the lesion and inside each film's own lungs. The registry's CAM layer and the default
method are chosen from this table.

Usage: python -m benchmarks.bench_localisation [--n 400] [--layers conv_head,blocks.4] [--methods gradcam,hirescam]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_result
from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.data.synth import generate
from covidxr.explain.gradcam import CAM_METHODS
from covidxr.explain.job import explain_run
from covidxr.models.factory import load_model
from covidxr.models.registry import get_backbone
from covidxr.pipeline import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=400, help="phantoms, as the demo")
    parser.add_argument("--seeds", default="0,1", help="phantom sets and runs, one per seed")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--layers", default="conv_head,blocks.6,blocks.5,blocks.4,blocks.3")
    parser.add_argument("--methods", default="gradcam", help=f"comma-separated: {', '.join(CAM_METHODS)}")
    args = parser.parse_args()
    combos = [(layer, method) for layer in args.layers.split(",") for method in args.methods.split(",")]
    results: dict[str, Any] = {"backbone": args.backbone, "registry_layer": get_backbone(args.backbone).cam_layer}
    per_seed: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (int(s) for s in args.seeds.split(",")):
            data = Path(tmp) / f"phantoms{seed}"
            generate(data, n=args.n, seed=seed)
            cfg = Config(DataConfig(paths=(str(data),), seed=seed),
                         TrainConfig(backbone=args.backbone, cache_dir=str(Path(tmp) / "cache")))  # fmt: skip
            run_dir = Path(tmp) / f"run{seed}"
            run(cfg, run_dir, n_resamples=50, explain=False)
            model = load_model(run_dir)
            for layer, method in combos:
                began = time.perf_counter()
                e = explain_run(run_dir, mc_passes=2, model=model, cam_layer=layer, cam_method=method)
                loc = e.localisation
                assert loc is not None
                name = layer if method == "gradcam" else f"{layer} {method}"
                per_seed.setdefault(name, {})[str(seed)] = {
                    "true_positives": loc.true_positives,
                    "pointing_game": loc.pointing_game,
                    "chance": loc.chance,
                    "energy_inside_lesion": loc.energy_inside_mask,
                    "lesion_area": loc.mask_area,
                    "cam_share_in_lungs": 1 - e.cam_energy_outside_lungs,
                    "lung_area": e.lung_area,
                    "seconds": time.perf_counter() - began,
                }
            results["layers"] = {
                layer: {
                    "mean_pointing_game": sum(r["pointing_game"] for r in rows.values()) / len(rows),
                    "mean_cam_share_in_lungs": sum(r["cam_share_in_lungs"] for r in rows.values()) / len(rows),
                    "seeds": rows,
                }
                for layer, rows in per_seed.items()
            }
            write_result("localisation", results)


if __name__ == "__main__":
    main()
