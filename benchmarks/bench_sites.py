"""Adapting a run to a hospital it never saw: how many of the hospital's films must be labelled.

The base run is trained on cxr-dev + cxr-ext (COVID-19 from one hospital, negatives from two others); the site is
cxr-lungs (COVID-19 and other films from hospitals no training set saw). For k = 0, 10, 20, 50, 100 labelled site
films (whole patients, 5 draws each), the head is adapted and the rest of the site scored: within-site AUC with a
CI over draws and patients, sensitivity and specificity at the adapted threshold. Then the unlabelled adaptation
(features re-centred to the site) before and after on all of cxr-lungs, and the time to adapt a site of 500 films
with cached features.

Usage: python -m benchmarks.bench_sites [--base RUN] [--draws 5] [--target-auc 0.8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_result

SHARED = Path(os.environ.get("COVIDXR_CXR_DEV", "../shared/data/cxr-dev")).resolve().parent


def base_run(path: Path) -> Path:
    if not (path / "model.json").is_file():
        data = [str(SHARED / "cxr-dev"), str(SHARED / "cxr-ext")]
        subprocess.run([sys.executable, "-m", "covidxr", "run", "--data", data[0], "--data", data[1], "--out",
                        str(path)], check=True)  # fmt: skip
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", type=Path, default=Path(tempfile.gettempdir()) / "covidxr-bench-sites-base")
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--target-auc", type=float, default=0.8)
    args = parser.parse_args()
    from covidxr.data.synth import generate
    from covidxr.run import Run
    from covidxr.sites.adapt import site_data
    from covidxr.sites.curve import curve_table, learning_curve
    from covidxr.sites.job import adapt_run

    run = Run(base_run(args.base))
    site = site_data(run, [str(SHARED / "cxr-lungs")])
    start = time.perf_counter()
    curve = learning_curve(run, site, (0, 10, 20, 50, 100), args.draws, 0, 1.0, args.target_auc)
    curve_s = time.perf_counter() - start
    print(curve_table(curve))
    results: dict[str, Any] = {"base": "cxr-dev + cxr-ext, head mode (defaults)", "site": "cxr-lungs",
                               "curve": curve.to_json(), "curve_seconds": round(curve_s, 1)}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        recentre = adapt_run(run, site, Path(tmp) / "recentred", mode="recentre")
        scores = {"before": recentre.before, "after": recentre.after}
        results["unlabelled_recentre_on_cxr_lungs"] = {k: v.to_json() for k, v in scores.items() if v is not None}
        generate(Path(tmp) / "site500", n=500, seed=77)
        t = time.perf_counter()
        big = site_data(run, [str(Path(tmp) / "site500")])
        cold = time.perf_counter() - t
        t = time.perf_counter()
        adapt_run(run, big, Path(tmp) / "adapted500")
        results["site_of_500_films"] = {"features_s_cold_cache": round(cold, 1),
                                        "adapt_s_cached_features": round(time.perf_counter() - t, 1),
                                        "target": "<= 60 s on 2 cores"}  # fmt: skip
    write_result("sites", results)


if __name__ == "__main__":
    main()
