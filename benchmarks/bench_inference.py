"""Inference speed, each against its baseline in the same run (2-core CPU unless the machine says otherwise):

1. INT8 ONNX (static QDQ on convolutions, `covidxr export --quantize int8`) vs PyTorch eager vs ONNX fp32 (the
   tuned session covidxr uses, and ONNX Runtime's default session), images/s at batch 8, for ResNet50 and
   EfficientNet-Lite0 runs trained on cxr-dev (head mode; ResNet50 from random weights, none ship offline),
   with the INT8 gate's test AUC delta and label agreement. Target: INT8 >= 2x PyTorch eager on ResNet50.
2. `covidxr predict` (its default: decoding in-process below 4 cores, in worker processes above; and with one
   decoding process) vs a bare loop over the same files (PIL decode, torch resize and normalise, the run's
   network, batch 16). Target: predict >= 0.9x the bare loop.

Usage: python -m benchmarks.bench_inference [--data ../shared/data/cxr-dev] [--images 300] [--only predict]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from PIL import Image

from benchmarks.common import RESULTS, write_result
from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.models.factory import load_model
from covidxr.serve.engine import INT8_FILE, ONNX_FILE, onnx_session, physical_cores
from covidxr.serve.export import export_run
from covidxr.serve.predict import default_workers, predict_to_file
from covidxr.serve.quantize import MAX_AUC_DROP, MIN_AGREEMENT, quantize_int8
from covidxr.training.job import train

BATCH = 8


def rate(fn: Callable[[], object], images: int, steps: int = 4) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return images * steps / (time.perf_counter() - start)


def engines(run_dir: Path, repeats: int = 3) -> dict[str, Any]:
    net, spec = load_model(run_dir)
    net.eval()
    x = torch.randn(BATCH, 3, spec.input_size, spec.input_size)
    feed = {"image": x.numpy()}
    default = ort.InferenceSession(str(run_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    tuned, int8 = onnx_session(run_dir / ONNX_FILE), onnx_session(run_dir / INT8_FILE)
    runs: dict[str, list[float]] = {"torch": [], "onnx_default": [], "onnx_fp32": [], "onnx_int8": []}
    for _ in range(repeats):  # alternate, so machine drift hits all alike
        with torch.no_grad():
            runs["torch"].append(rate(lambda: net(x), BATCH))
        runs["onnx_default"].append(rate(lambda: default.run(None, feed), BATCH))
        runs["onnx_fp32"].append(rate(lambda: tuned.run(None, feed), BATCH))
        runs["onnx_int8"].append(rate(lambda: int8.run(None, feed), BATCH))
    ips = {k: round(statistics.median(v), 2) for k, v in runs.items()}
    return {
        "images_per_s": ips,
        "int8_vs_torch": round(ips["onnx_int8"] / ips["torch"], 2),
        "int8_vs_onnx_fp32": round(ips["onnx_int8"] / ips["onnx_fp32"], 2),
        "onnx_fp32_vs_torch": round(ips["onnx_fp32"] / ips["torch"], 2),
        "tuned_vs_default_session": round(ips["onnx_fp32"] / ips["onnx_default"], 2),
    }


def bare_loop(run_dir: Path, files: list[Path], batch: int = 16) -> float:
    """The physical reference: decode, resize, normalise and score, nothing else, in one process."""
    net, spec = load_model(run_dir)
    net.eval()
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(files), batch):
            images = []
            for f in files[i : i + batch]:
                gray = torch.from_numpy(np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0)
                small = F.interpolate(gray[None, None], size=(spec.input_size,) * 2, mode="bilinear", antialias=True)
                images.append((small[0].expand(3, -1, -1) - mean) / std)
            net(torch.stack(images)).softmax(1)
    return len(files) / (time.perf_counter() - start)


def predict_speed(run_dir: Path, files: list[Path], root: Path) -> dict[str, Any]:
    folder = root / "to-predict"
    folder.mkdir()
    for i, f in enumerate(files):
        (folder / f"{i:05d}{f.suffix}").symlink_to(f.resolve())
    listed = sorted(folder.iterdir())

    def predict(workers: int) -> float:
        start = time.perf_counter()
        predict_to_file(run_dir, [folder], root / f"p{workers}.csv", workers=workers)
        return len(files) / (time.perf_counter() - start)

    bare_loop(run_dir, listed[:16])  # warm the page cache for both
    runs: dict[str, list[float]] = {"bare_loop": [], "predict": [], "predict_one_decoding_process": []}
    for _ in range(2):
        runs["bare_loop"].append(bare_loop(run_dir, listed))
        runs["predict"].append(predict(default_workers()))
        runs["predict_one_decoding_process"].append(predict(1))
    ips = {k: round(statistics.median(v), 2) for k, v in runs.items()}
    return {
        "images": len(files),
        "default_workers": default_workers(),
        "images_per_s": ips,
        "predict_vs_bare_loop": round(ips["predict"] / ips["bare_loop"], 2),
        "one_decoding_process_vs_bare_loop": round(ips["predict_one_decoding_process"] / ips["bare_loop"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=os.environ.get("COVIDXR_CXR_DEV", "../shared/data/cxr-dev"))
    parser.add_argument("--images", type=int, default=300, help="files for the predict comparison")
    parser.add_argument("--only", choices=["predict"], help="rerun the predict part, merged into saved results")
    args = parser.parse_args()
    results: dict[str, Any] = {"physical_cores": physical_cores(), "batch": BATCH}
    if args.only:
        saved = json.loads((RESULTS / "inference.json").read_text())
        results |= {k: v for k, v in saved.items() if k not in ("benchmark", "date", "machine")}
    models = [] if args.only else [("resnet50", "none")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = {}
        for backbone, weights in (*models, ("tf_efficientnet_lite0", "imagenet")):
            tc = TrainConfig(backbone=backbone, weights=weights, augment="none", cache_dir=str(root / "cache"))
            run_dir = train(Config(DataConfig(paths=(args.data,)), tc), root / backbone).run_dir
            export_run(run_dir, "onnx")
            # quantised whatever the numbers (for the speed), then judged against the gate `export` applies
            q = quantize_int8(run_dir, max_auc_drop=1.0, min_agreement=0.0)
            gate = {k: v for k, v in q.to_json().items() if k not in ("path", "reduce_range")}
            gate["passes_gate"] = q.auc_drop <= MAX_AUC_DROP and q.agreement >= MIN_AGREEMENT
            runs[backbone] = run_dir
            if not args.only:
                results[backbone] = {"weights": weights, "int8_gate": gate} | engines(run_dir)
            print(backbone, results[backbone], flush=True)
        files = sorted(p for p in Path(args.data).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        step = max(1, len(files) // args.images)
        results["predict_lite0"] = predict_speed(runs["tf_efficientnet_lite0"], files[::step][: args.images], root)
    results["targets"] = {"int8_vs_torch_resnet50": 2.0, "predict_vs_bare_loop": 0.9, "int8_auc_drop_max": 0.005}
    write_result("inference", results)


if __name__ == "__main__":
    main()
