"""Preprocessing against acquisition cues, measured before any becomes a default. Binary COVID-19 vs rest on
cxr-dev (one patient-level split, default recipe), one run per option, each scored on:

- the audit's baselines: image-file facts (size, format, intensity, borders) and the same intensity and border
  facts on the network's input after preprocessing (what cropping and equalisation leave of the cues);
- the lung-occlusion test (test AUC with both lungs hidden);
- cxr-ext, adult films without COVID-19 from a third hospital: the share of its normal and pneumonia films
  called COVID-19 (lower is better: those calls are the shortcut at work).

Usage: python -m benchmarks.bench_preprocess [--data ../shared/data/cxr-dev] [--ext ../shared/data/cxr-ext]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import write_result
from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.evaluation.job import evaluate_external, evaluate_run
from covidxr.training.job import train

OPTIONS: dict[str, dict[str, Any]] = {
    "squash (the study's)": {},
    "pad": {"resize": "pad"},
    "crop": {"resize": "crop"},
    "hist equalisation": {"equalize": "hist"},
    "crop + 5% border + CLAHE": {"resize": "crop", "border_crop": 0.05, "equalize": "clahe"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("COVIDXR_CXR_DEV", "../shared/data/cxr-dev"))
    parser.add_argument("--ext", default="../shared/data/cxr-ext")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, options in OPTIONS.items():
            cfg = Config(DataConfig(paths=(args.data,)), TrainConfig(cache_dir=str(root / "cache"), **options))
            run_dir = root / name.replace(" ", "_")
            train(cfg, run_dir)
            metrics = evaluate_run(run_dir, n_resamples=200)
            external = evaluate_external(run_dir, args.ext, n_resamples=0)
            audit = metrics.audit
            assert audit is not None
            results[name] = {
                "options": options,
                "test_auc": metrics.test.metrics["roc_auc"],
                "file_facts_auc": audit.metadata_baseline.auc,
                "input_facts_auc": audit.input_baseline.auc,
                "lungs_hidden_auc": audit.lung_occlusion.auc_occluded,
                "ext_normal_called_covid": external.per_label["normal"].rate_called,
                "ext_pneumonia_called_covid": external.per_label["pneumonia"].rate_called,
            }
            print(name, results[name], flush=True)
    print(write_result("preprocess", {"data": "cxr-dev, binary, one patient-level split", "options": results}))


if __name__ == "__main__":
    main()
