"""`covidxr run` in head mode at users' sizes: seconds and peak memory per stage at 10k, 30k and 100k films, and
the slope (time(100k) / time(10k); linear is 10).

The films are phantoms at a small size (`covidxr data synth --size 64`), written once for the largest size; each
smaller size is the first N rows of its labels.csv (whole patients). Each size runs in a fresh process with a cold
cache, stage by stage as `covidxr run` does them: prepare (check every film, split), train (film cache, features,
head), evaluate (calibration, bootstrap CIs, audit), explain (a bounded sample), report. Peak RSS is the process's
high-water mark after each stage.

Usage: python -m benchmarks.bench_scale [--sizes 10000,30000,100000] [--work DIR] [--augment xray]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write_result


def _subset(labels: Path, n: int) -> Path:
    out = labels.with_name(f"first-{n}.csv")
    if not out.is_file():
        with labels.open(newline="") as fh:
            reader = csv.reader(fh)
            rows = [next(reader), *(row for _, row in zip(range(n), reader, strict=False))]
        with out.open("w", newline="") as fh:
            csv.writer(fh).writerows(rows)
    return out


def one_size(data: Path, work: Path, augment: str) -> dict[str, Any]:
    """Every stage of a head-mode run on `data`, in this process: seconds and peak RSS (MB) after each."""
    from covidxr.config import Config, DataConfig, TrainConfig
    from covidxr.data.prepare import prepare
    from covidxr.evaluation.job import evaluate_run
    from covidxr.explain.job import explain_run
    from covidxr.report.html import write_report
    from covidxr.run import Run
    from covidxr.training.job import train

    cfg = Config(DataConfig(paths=(str(data),)), TrainConfig(augment=augment, cache_dir=str(work / "cache")))  # type: ignore[arg-type]
    run_dir = work / "run"
    stages: dict[str, dict[str, float]] = {}
    held: dict[str, Any] = {}

    def timed(name: str, work_fn: Any) -> Any:
        start = time.perf_counter()
        out = work_fn()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stages[name] = {"s": round(time.perf_counter() - start, 1), "peak_rss_mb": round(peak)}
        print(f"{data.name} {name}: {stages[name]}", file=sys.stderr, flush=True)
        return out

    held["prepared"] = timed("prepare", lambda: prepare(run_dir, cfg.data))
    timed("train", lambda: train(cfg, run_dir, prepared=held["prepared"]))
    run = Run(run_dir, manifest=held["prepared"].manifest)
    timed("evaluate", lambda: evaluate_run(run, n_resamples=1000))
    timed("explain", lambda: explain_run(run))
    timed("report", lambda: write_report(run))
    total = round(sum(s["s"] for s in stages.values()), 1)
    films = len(held["prepared"].manifest.records)
    return {"films": films, "total_s": total, "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
            "stages": stages}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "covidxr-bench-scale")
    parser.add_argument("--augment", default="xray", help="the recipe's default; none leaves out the copies")
    parser.add_argument("--film-size", type=int, default=64)
    parser.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)  # a child process: one size
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.work, args.augment)))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    phantoms = args.work / f"phantoms-{max(sizes)}-{args.film_size}"
    if not (phantoms / "labels.csv").is_file():
        subprocess.run([sys.executable, "-m", "covidxr", "data", "synth", str(phantoms), "--n", str(max(sizes)),
                        "--size", str(args.film_size), "--seed", "11"], check=True)  # fmt: skip
    results: dict[str, Any] = {"film_size": args.film_size, "augment": args.augment, "runs": {}}
    for n in sizes:
        work = args.work / f"run-{n}"
        subprocess.run(["rm", "-rf", str(work)], check=True)
        data = _subset(phantoms / "labels.csv", n)
        child = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_scale", "--one", str(data), "--work", str(work),
             "--augment", args.augment], check=True, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        results["runs"][str(n)] = json.loads(child.stdout.strip().splitlines()[-1])
    runs = results["runs"]
    if len(sizes) > 1:
        small, large = runs[str(min(sizes))], runs[str(max(sizes))]
        results["slope_time"] = round(large["total_s"] / small["total_s"], 2)
        results["films_ratio"] = round(max(sizes) / min(sizes), 1)
    results["targets"] = "100k end to end <= 60 min on 2 cores, peak RSS <= 4 GB, time(100k)/time(10k) <= 11"
    write_result("scale", results)


if __name__ == "__main__":
    main()
