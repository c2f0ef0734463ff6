"""Quality by 5-fold patient-grouped cross-validation, through covidxr's own train and evaluate:

1. cxr-dev, multiclass (COVID-19 / normal / pneumonia): the study's recipe, the default recipe at three head
   learning rates (the measurement behind the default's rate), and the linear probe as model (`--head
   linear`), last-k fine-tuning on the cached trunk output (k=1), the lr 1e-3 model scored with test-time
   augmentation, and an ensemble of three of them. Per
   fold: within-Kermany pneumonia-vs-normal AUC and accuracy, COVID-vs-rest AUC, ECE after
   temperature scaling, best epoch and epochs run, training seconds; fold 0's model also scored on cxr-ext
   (adult films without COVID-19 from a third hospital): the share of its normal films called COVID-19.
2. With --deconfounded: cxr-dev + cxr-ext joined, binary COVID-19 vs rest, default recipe: held-out cxr-ext
   normal films called COVID-19 and COVID-19 recall on held-out Hannover patients.

Folds: whole patient groups (duplicates merged, as covidxr splits), stratified by label; validation is a
sixth of each training part, again by patient. Nothing is chosen on a test fold.

Usage: python -m benchmarks.bench_quality [--folds 5] [--deconfounded] [--ext ../shared/data/cxr-ext] [--only NAME]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from benchmarks.common import RESULTS, write_result
from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.data.prepare import inspect_data
from covidxr.data.split import Split, group_ids, write_split
from covidxr.evaluation.job import evaluate_external, evaluate_run
from covidxr.evaluation.metrics import roc_auc
from covidxr.pipeline import ensemble
from covidxr.training.job import train

VARIANTS: dict[str, dict[str, Any]] = {
    "study recipe": {"recipe": "study"},
    "default lr 3e-4": {"recipe": "default", "lr": 3e-4},
    "default lr 1e-3": {"recipe": "default"},
    "default lr 3e-3": {"recipe": "default", "lr": 3e-3},
    "linear probe": {"recipe": "default", "head": "linear"},
    "last-k (k=1)": {"recipe": "default", "freeze": "last-k", "last_k": 1},
}
ENSEMBLE = ("default lr 1e-3", "linear probe", "last-k (k=1)")  # members averaged per fold


def folds(cfg: DataConfig, k: int, seed: int = 0) -> tuple[Any, list[Split]]:
    """k patient-grouped, label-stratified splits: fold i is test, a sixth of the rest (by patient) is val."""
    manifest, report = inspect_data(cfg)
    groups = group_ids(manifest.records, report.duplicate_links())
    g = np.array([groups[r.path] for r in manifest.records])
    y = np.array([r.label for r in manifest.records])
    outer = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    splits = []
    for rest, test in outer.split(y, y, g):
        inner = StratifiedGroupKFold(n_splits=6, shuffle=True, random_state=seed)
        fit, val = next(inner.split(y[rest], y[rest], g[rest]))
        assignment = {manifest.records[i].path: "test" for i in test}
        assignment |= {manifest.records[rest[i]].path: "train" for i in fit}
        assignment |= {manifest.records[rest[i]].path: "val" for i in val}
        splits.append(Split(assignment, groups))
    return manifest, splits


def _test_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "predictions.csv").open() as fh:
        return [r for r in csv.DictReader(fh) if r["split"] == "test"]


def multiclass_scores(run_dir: Path) -> dict[str, float]:
    rows = _test_rows(run_dir)
    kermany = [r for r in rows if r["label"] in ("normal", "pneumonia")]
    pn = np.array([float(r["score_pneumonia"]) for r in kermany])
    nn = np.array([float(r["score_normal"]) for r in kermany])
    is_pneumonia = np.array([r["label"] == "pneumonia" for r in kermany])
    covid = np.array([float(r["score_COVID-19"]) for r in rows])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    state_file = run_dir / "state.json"  # an ensemble trains nothing and has none
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    epochs = {k: state[k] for k in ("best_epoch", "epochs_run") if k in state}
    return {
        "kermany_auc": roc_auc(is_pneumonia, pn / (pn + nn)),
        "kermany_acc": float(np.mean((pn > nn) == is_pneumonia)),
        "covid_vs_rest_auc": roc_auc(np.array([r["label"] == "COVID-19" for r in rows]), covid),
        "ece": metrics["calibration"]["test_after"]["ece"],
        "ece_before": metrics["calibration"]["test_before"]["ece"],
    } | epochs


def run_variant(cfg: Config, run_dir: Path, split: Split, manifest: Any) -> dict[str, float]:
    run_dir.mkdir(parents=True)
    write_split(split, manifest, run_dir / "splits.csv")
    start = time.perf_counter()
    train(cfg, run_dir)
    seconds = time.perf_counter() - start
    evaluate_run(run_dir, n_resamples=0, audit=False)
    return {**multiclass_scores(run_dir), "train_seconds": seconds}


def cross_validate(
    data: str,
    ext: str | None,
    k: int,
    root: Path,
    save: Callable[[Any], None],
    only: list[str] | None = None,
    max_folds: int | None = None,
) -> dict[str, Any]:
    data_cfg = DataConfig(paths=(data,), task="multiclass")
    manifest, splits = folds(data_cfg, k)
    names = only or [*VARIANTS, "default lr 1e-3 + TTA", "ensemble"]
    per_variant: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    for i, split in enumerate(splits[:max_folds]):  # the first folds of the same k-fold partition
        done: dict[str, Path] = {}
        for name in names:
            run_dir = root / f"fold{i}" / name.replace(" ", "-")
            if name == "default lr 1e-3 + TTA":  # the same model, scored with test-time augmentation
                base = "default lr 1e-3"
                if base not in done:
                    done[base] = root / f"fold{i}" / base.replace(" ", "-")
                    cfg = Config(data_cfg, TrainConfig(cache_dir=str(root / "cache"), **VARIANTS[base]))
                    run_variant(cfg, done[base], split, manifest)
                shutil.copytree(done[base], run_dir)
                start = time.perf_counter()
                evaluate_run(run_dir, n_resamples=0, audit=False, tta=True)
                scores = {**multiclass_scores(run_dir), "train_seconds": time.perf_counter() - start}
            elif name == "ensemble":
                for member in ENSEMBLE:
                    if member not in done:
                        cfg = Config(data_cfg, TrainConfig(cache_dir=str(root / "cache"), **VARIANTS[member]))
                        done[member] = root / f"fold{i}" / member.replace(" ", "-")
                        run_variant(cfg, done[member], split, manifest)
                start = time.perf_counter()
                ensemble([done[m] for m in ENSEMBLE], run_dir, n_resamples=0)
                scores = {**multiclass_scores(run_dir), "train_seconds": time.perf_counter() - start}
            else:
                cfg = Config(data_cfg, TrainConfig(cache_dir=str(root / "cache"), **VARIANTS[name]))
                scores = run_variant(cfg, run_dir, split, manifest)
                done[name] = run_dir
            if i == 0 and ext:
                result = evaluate_external(run_dir, ext, n_resamples=0)
                scores["ext_normal_called_covid"] = result["per_label"]["normal"]["rate_called"]
                scores["ext_pneumonia_called_covid"] = result["per_label"]["pneumonia"]["rate_called"]
            per_variant[name].append(scores)
            print(f"fold {i} {name}: " + ", ".join(f"{m} {v:.3f}" for m, v in scores.items()), flush=True)
        save({name: summarise(rows) for name, rows in per_variant.items()})  # a stopped run keeps its folds
    return {name: summarise(rows) for name, rows in per_variant.items()}


def summarise(rows: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for metric in rows[0]:
        values = np.array([r[metric] for r in rows if metric in r], dtype=float)
        out[metric] = {"mean": float(values.mean()), "std": float(values.std()), "folds": values.tolist()}
    trained = [r for r in rows if "best_epoch" in r]
    if trained:
        out["best_before_last_share"] = float(np.mean([r["best_epoch"] < r["epochs_run"] - 1 for r in trained]))
    return out


def deconfounded(data: str, ext: str, k: int, root: Path, save: Callable[[Any], None]) -> dict[str, Any]:
    data_cfg = DataConfig(paths=(data, ext), task="binary")
    manifest, splits = folds(data_cfg, k)
    rows = []
    for i, split in enumerate(splits):
        cfg = Config(data_cfg, TrainConfig(cache_dir=str(root / "cache")))
        run_dir = root / f"deconf{i}"
        run_dir.mkdir(parents=True)
        write_split(split, manifest, run_dir / "splits.csv")
        train(cfg, run_dir)
        evaluate_run(run_dir, n_resamples=0, audit=False)
        test = _test_rows(run_dir)
        ext_normal = [r for r in test if r["label"] == "normal" and "nih" in r["patient_id"]]
        covid = [r for r in test if r["label"] == "COVID-19"]
        row = {
            "ext_normal_called_covid": float(np.mean([r["predicted"] == "1" for r in ext_normal])),
            "covid_recall": float(np.mean([r["predicted"] == "1" for r in covid])),
            "auc": roc_auc(
                np.array([r["label"] == "COVID-19" for r in test]), np.array([float(r["score_COVID-19"]) for r in test])
            ),
        }
        rows.append(row)
        print(f"deconfounded fold {i}: " + ", ".join(f"{m} {v:.3f}" for m, v in row.items()), flush=True)
        save(_folds_mean(rows))
    return _folds_mean(rows)


def _folds_mean(rows: list[dict[str, float]]) -> dict[str, Any]:
    summary = {m: {"mean": float(np.mean([r[m] for r in rows])), "folds": [r[m] for r in rows]} for m in rows[0]}
    return summary | {"folds_completed": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("COVIDXR_CXR_DEV", "../shared/data/cxr-dev"))
    parser.add_argument("--ext", default="../shared/data/cxr-ext")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--deconfounded", action="store_true", help="also the cxr-dev + cxr-ext binary recipe")
    parser.add_argument(
        "--only", action="append", help="run only these variants (repeatable), merged into the saved results"
    )
    parser.add_argument("--max-folds", type=int, help="stop after this many folds of the same partition")
    args = parser.parse_args()
    ext = args.ext if Path(args.ext).is_dir() else None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        payload: dict[str, Any] = {"data": "cxr-dev", "folds": args.folds, "task": "multiclass"}
        earlier: dict[str, Any] = {}
        if args.only:  # keep the variants not rerun from the last saved results
            saved = RESULTS / "quality.json"
            previous = json.loads(saved.read_text()) if saved.is_file() else {}
            payload |= {k: v for k, v in previous.items() if k in ("deconfounded", "note")}
            earlier = {k: v for k, v in previous.get("variants", {}).items() if k not in args.only}

        def saver(part: str) -> Callable[[Any], None]:
            merge = earlier if part == "variants" else {}
            return lambda value: write_result("quality", payload | {part: merge | value})

        variants = cross_validate(args.data, ext, args.folds, root, saver("variants"), args.only, args.max_folds)
        payload["variants"] = earlier | variants
        if args.deconfounded and ext:
            payload["deconfounded"] = deconfounded(args.data, ext, args.folds, root, saver("deconfounded"))
    print(write_result("quality", payload))


if __name__ == "__main__":
    main()
