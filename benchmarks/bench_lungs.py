"""Lung segmentation and lung-restricted input, measured on hospitals the model did not see.

Part 1, the segmenter: Dice on held-out cxr-lungs patients (the model folder's own patient split) and on
phantoms, and films per second at 256 px on this machine against smp's default U-Net over the same encoder, run
side by side.

Part 2, `--lungs none|crop|mask` (default recipe, binary COVID-19 vs rest), each run scored on:
- internal test AUC (films from the training hospitals) and the AUC with each film's own lungs hidden;
- the share of Grad-CAM energy inside each film's lungs (test);
- NIH normals (adult films of a training hospital) called COVID-19 on the internal test;
- the fair outside AUC: cxr-lungs, COVID-19 and other films from one collection of hospitals none of the
  training sets holds (within-source AUC, evaluation.fair), and how many distinct scores it gives.
Two-set runs train on cxr-dev + cxr-ext and are scored on all of cxr-lungs; three-set runs add one half of
cxr-lungs' patients to training and are scored on the other half (both halves, swapped: two folds).

Part 3, `--variants`: the recipe options measured the same way — `strong-intensity` (`--augment xray-strong`:
gamma, contrast, blur, noise) and `source-balanced` (`--balance source`: draws balanced over source x class).
With `--add`, the runs named are measured into the existing results (keys `<set>/<mode>+<variant>`).

Usage: python -m benchmarks.bench_lungs --lung-model DIR [--modes none,crop,mask] [--three-set-folds 2]
       python -m benchmarks.bench_lungs --lung-model DIR --add --modes none --variants strong-intensity,source-balanced
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS, write_result
from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.data.prepare import inspect_data
from covidxr.data.split import read_split
from covidxr.data.synth import generate
from covidxr.evaluation.job import evaluate_external, evaluate_run
from covidxr.evaluation.segmentation import evaluate_segmenter
from covidxr.explain.job import explain_run
from covidxr.lungs import load_lung_model
from covidxr.lungs.films import with_masks
from covidxr.lungs.segmenter import to_input
from covidxr.lungs.train import LungTrainConfig, train_lungs
from covidxr.models.registry import get_backbone
from covidxr.models.weights import bundled_weights_file
from covidxr.training.job import train

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "strong-intensity": {"augment": "xray-strong"},
    "source-balanced": {"balance": "source"},
}
SHARED = Path(os.environ.get("COVIDXR_CXR_DEV", "../shared/data/cxr-dev")).parent


def films_per_second(net: torch.nn.Module, x: torch.Tensor, repeats: int = 8) -> float:
    net.eval()
    with torch.inference_mode():
        net(x[:2])
        began = time.perf_counter()
        for _ in range(repeats):
            net(x)
    return repeats * len(x) / (time.perf_counter() - began)


def speed_part(lung_model: Path) -> dict[str, Any]:
    """Films per second at 256 px: our FPN against smp's default U-Net over the same encoder, side by side."""
    import segmentation_models_pytorch as smp

    model = load_lung_model(lung_model)
    films = [np.random.default_rng(i).random((400, 380)).astype(np.float32) for i in range(16)]
    x = torch.stack([to_input(f, model.spec) for f in films]).contiguous(memory_format=torch.channels_last)
    ours = films_per_second(model.net, x)  # channels-last, as load_lung_model keeps it
    unet = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, classes=1).to(memory_format=torch.channels_last)
    unet_rate = films_per_second(unet, x)
    return {"fpn_lite0": ours, "unet_lite0_baseline": unet_rate, "ratio": ours / unet_rate,
            "threads": torch.get_num_threads()}  # fmt: skip


def segmenter_part(lung_model: Path, root: Path) -> dict[str, Any]:
    model = load_lung_model(lung_model)
    data = DataConfig(paths=(str(SHARED / "cxr-lungs"),))
    manifest, _ = inspect_data(data)
    masked = manifest.subset(with_masks(manifest))
    split = read_split(lung_model / "splits.csv", masked)
    held = evaluate_segmenter(model, masked, split.records(masked, "test"), n_resamples=1000)
    generate(root / "phantoms", n=120, seed=11)
    phantom_data = DataConfig(paths=(str(root / "phantoms"),))
    encoder = bundled_weights_file(get_backbone("tf_efficientnet_lite0"))
    trained = train_lungs(phantom_data, root / "phantom-lungs", LungTrainConfig(epochs=8, encoder_weights=encoder))
    pm, _ = inspect_data(phantom_data)
    phantoms = evaluate_segmenter(load_lung_model(root / "phantom-lungs"), pm, trained.split.records(pm, "test"))
    return {
        "cxr_lungs_held_out": {"films": held.n_images, "patients": held.n_patients, "mean_dice": held.mean_dice,
                               "dice_ci95": held.dice_ci95, "median_dice": held.median_dice, "flagged": held.flagged},
        "phantoms_held_out": {"films": phantoms.n_images, "mean_dice": phantoms.mean_dice,
                              "dice_ci95": phantoms.dice_ci95},
        "films_per_second_256px": speed_part(lung_model),
    }  # fmt: skip


def cxr_lungs_half(root: Path, keep: set[str], name: str) -> Path:
    """A view of cxr-lungs holding only some patients: its images and masks linked, its CSV filtered."""
    src = SHARED / "cxr-lungs"
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    for folder in ("images", "masks"):
        if not (out / folder).exists():
            (out / folder).symlink_to((src / folder).resolve())
    with (src / "labels.csv").open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = [r for r in reader if r["patient_id"] in keep]
        fields = reader.fieldnames or []
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return out


def halves(seed: int = 0) -> tuple[set[str], set[str]]:
    """cxr-lungs' patients in two halves, each holding COVID-19 and other patients."""
    with (SHARED / "cxr-lungs" / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    covid = sorted({r["patient_id"] for r in rows if r["label"] == "COVID-19"})
    other = sorted({r["patient_id"] for r in rows} - set(covid))
    rng = np.random.default_rng(seed)
    a: set[str] = set()
    for group in (covid, other):
        shuffled = list(rng.permutation(group))
        a |= set(shuffled[: len(shuffled) // 2])
    return a, {r["patient_id"] for r in rows} - a


def lungs_run(name: str, paths: tuple[str, ...], outside: Path, mode: str, lung_model: Path, root: Path,
              variant: str = "default") -> dict[str, Any]:  # fmt: skip
    tc = TrainConfig(lungs=mode, lung_model=str(lung_model) if mode != "none" else None,  # type: ignore[arg-type]
                     cache_dir=str(root / "cache"), **VARIANTS[variant])  # fmt: skip
    run_dir = root / f"{name}-{mode}-{variant}"
    began = time.perf_counter()
    train(Config(DataConfig(paths=paths), tc), run_dir)
    metrics = evaluate_run(run_dir, n_resamples=200)
    explanation = explain_run(run_dir, mc_passes=2)
    external = evaluate_external(run_dir, outside, n_resamples=500)
    audit = metrics.audit
    assert audit is not None and external.fair is not None
    nih = next((v for s, v in metrics.test_by_source.items() if "NIH" in s or "nih" in s.lower()), None)
    with (Path(external.out) / "predictions.csv").open() as fh:
        distinct = len({r["score_COVID-19"] for r in csv.DictReader(fh)})
    return {
        "internal_test_auc": metrics.test.metrics["roc_auc"],
        "lungs_hidden_auc": audit.lung_occlusion.auc_occluded,
        "cam_share_in_lungs": 1 - explanation.cam_energy_outside_lungs,
        "nih_normals_called_covid": nih.rate_called.get("normal") if nih else None,
        "fair_outside_auc": external.fair.within_source_auc,
        "fair_outside_ci95": external.fair.within_source_ci95,
        "outside_sensitivity": external.fair.sensitivity,
        "outside_specificity": external.fair.specificity,
        "outside_films": external.external.n_images,
        "outside_distinct_scores": distinct,
        "temperature": metrics.calibration.temperature,
        "seconds": time.perf_counter() - began,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lung-model", type=Path, help="a lung model trained on cxr-lungs (modes crop, mask)")
    parser.add_argument("--modes", default="none,crop,mask")
    parser.add_argument("--three-set-folds", type=int, default=2)
    parser.add_argument("--skip-segmenter", action="store_true")
    parser.add_argument("--speed-only", action="store_true", help="re-measure films/s into the existing results")
    parser.add_argument("--variants", default="default", help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--add", action="store_true", help="measure into the existing results (no segmenter part)")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if args.lung_model is None and (set(modes) != {"none"} or not args.add):
        parser.error("--lung-model is needed for the segmenter part and for --modes crop, mask")
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    if args.speed_only:  # on an idle machine: the full run shares its cores with the classifier runs
        previous = json.loads((RESULTS / "lungs.json").read_text())
        previous["segmenter"]["films_per_second_256px"] = speed_part(args.lung_model)
        write_result("lungs", {k: v for k, v in previous.items() if k not in ("benchmark", "date", "machine")})
        return
    if args.add:
        previous = json.loads((RESULTS / "lungs.json").read_text())
        results = {k: v for k, v in previous.items() if k not in ("benchmark", "date", "machine")}
    else:
        model = load_lung_model(args.lung_model)  # named by its weights, not by a folder of this machine
        results = {"lung_model": {"sha256": model.sha256, "encoder_weights": model.spec.weights}, "runs": {}}
    runs = [(mode, variant) for variant in variants for mode in modes]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if not args.skip_segmenter and not args.add:
            results["segmenter"] = segmenter_part(args.lung_model, root)
            write_result("lungs", results)
        two = (str(SHARED / "cxr-dev"), str(SHARED / "cxr-ext"))
        for mode, variant in runs:
            results["runs"][f"two-set/{_name(mode, variant)}"] = lungs_run(
                "two", two, SHARED / "cxr-lungs", mode, args.lung_model, root, variant
            )
            write_result("lungs", results)
        a, b = halves()
        for fold, (train_half, test_half) in enumerate([(a, b), (b, a)][: args.three_set_folds]):
            inside = cxr_lungs_half(root, train_half, f"lungs-train-{fold}")
            outside = cxr_lungs_half(root, test_half, f"lungs-test-{fold}")
            for mode, variant in runs:
                key = f"three-set fold {fold}/{_name(mode, variant)}"
                results["runs"][key] = lungs_run(f"three{fold}", (*two, str(inside)), outside, mode, args.lung_model,
                                                 root, variant)  # fmt: skip
                write_result("lungs", results)


def _name(mode: str, variant: str) -> str:
    return mode if variant == "default" else f"{mode}+{variant}"


if __name__ == "__main__":
    main()
