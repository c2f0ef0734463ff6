"""CUDA smoke run and GPU timing (only where a GPU is present; never needed by the tests):

Full fine-tuning of EfficientNet-Lite0 (lr 3e-4) on 240 phantoms for 10 epochs on the GPU in fp32 and 16-mixed,
then evaluation (threshold, temperature, bootstrap CIs) of each run, and the same training on the CPU for one
epoch as the baseline: seconds per epoch and the GPU/CPU ratio, with the runs' test AUC.

Usage: python -m benchmarks.bench_gpu
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_result
from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.data.synth import generate
from covidxr.evaluation.job import evaluate_run
from covidxr.training.job import train


def timed_run(data: Path, out: Path, accelerator: str, precision: str, epochs: int) -> dict[str, Any]:
    tc = TrainConfig(
        freeze="full", accelerator=accelerator, devices="1", precision=precision, epochs=epochs, batch_size=16, lr=3e-4,
        augment="none", feature_cache=False, patience=epochs, num_workers=4,
    )  # fmt: skip
    start = time.perf_counter()
    result = train(Config(DataConfig(paths=(str(data),)), tc), out)
    seconds = time.perf_counter() - start
    history = [float(r) for r in _column(out / "history.csv", "seconds")]
    row: dict[str, Any] = {
        "epochs": result.epochs_run,
        "wall_s": round(seconds, 1),
        "epoch_s_median": round(sorted(history)[len(history) // 2], 2),
        "best_val_loss": round(result.best_val_loss, 4),
    }
    if accelerator == "gpu":
        metrics = evaluate_run(out, n_resamples=100, audit=False)
        row["test_auc"] = round(metrics.test.metrics["roc_auc"], 4)
    return row


def _column(path: Path, name: str) -> list[str]:
    import csv

    with path.open() as fh:
        return [r[name] for r in csv.DictReader(fh)]


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark runs where a GPU is present")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "ph", n=240, seed=3)
        results = {
            "gpu_fp32": timed_run(root / "ph", root / "gpu32", "gpu", "32-true", 10),
            "gpu_16_mixed": timed_run(root / "ph", root / "gpu16", "gpu", "16-mixed", 10),
            "cpu_fp32": timed_run(root / "ph", root / "cpu", "cpu", "32-true", 1),
        }
    cpu = results["cpu_fp32"]["epoch_s_median"]
    results["gpu_fp32_vs_cpu_epoch"] = round(cpu / results["gpu_fp32"]["epoch_s_median"], 1)
    results["gpu_16_mixed_vs_cpu_epoch"] = round(cpu / results["gpu_16_mixed"]["epoch_s_median"], 1)
    print(json.dumps(results, indent=2))
    write_result("gpu", results)


if __name__ == "__main__":
    main()
