"""Wall time of the main job on a 2-core CPU: `covidxr demo` (phantoms) and `covidxr demo --data cxr-dev`,
each from nothing (fresh output folder, cold feature cache). Target: <= 5 minutes each.

The baseline is the target itself (300 s); the ratio is wall time / target.
Usage: python benchmarks/bench_demo.py [--data ../shared/data/cxr-dev]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import write_result

TARGET_S = 300.0


def timed_demo(out: Path, *extra: str) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "covidxr", "demo", "--out", str(out), *extra], check=True, capture_output=True
    )
    wall = time.perf_counter() - start
    run_dir = next(p for p in out.iterdir() if p.name.startswith("run"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test = metrics["test"]["metrics"]
    summary = {k: round(test[k], 3) for k in ("accuracy", "f1", "roc_auc")}
    summary["audit_warnings"] = len(metrics["audit"]["warnings"])
    return wall, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("COVIDXR_CXR_DEV", "../shared/data/cxr-dev"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("phantoms", ()), ("cxr-dev", ("--data", args.data))):
            wall, summary = timed_demo(Path(tmp) / name, *extra)
            results[name] = {"wall_s": round(wall, 1), "ratio_to_target": round(wall / TARGET_S, 3), "test": summary}
    write_result("demo_wall_time", {"target_s": TARGET_S, "runs": results})


if __name__ == "__main__":
    main()
