"""Every stage on a GPU, and films at the hardware's rate (only where a GPU is present; never needed by the tests).

1. Stages: `covidxr run` in head mode on 240 phantoms with --accelerator gpu (extraction, head, evaluation with the
   audit's occlusion, explanations, report), then predict, export (parity), explain and lungs segment under the
   same placement; every stage recorded by covidxr.device must have run on CUDA.
2. CPU vs GPU: the same test films scored in fp32 on each: max |logit difference| (target <= 1e-4).
3. Head-mode extraction: films/s on the CPU (all cores) vs the GPU (fp32, bf16), the same films from the film cache.
4. Full fine-tuning of EfficientNet-Lite0 at 224 px in bf16: films/s through covidxr's loader (film cache, loader
   workers) vs a bare loop over the same films pre-decoded in memory, and GPU busy share (NVML) during each.
5. `--lungs crop` (a lung model, each film's own lungs) vs `--lungs none`: seconds per epoch, the same settings.

Usage: python -m benchmarks.bench_gpu [--accelerator gpu] [--films 3000] [--out FILE]
(`--accelerator cpu --films 200` runs the same script on a CPU, as a check of the script itself.)
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import result_body, write_result
from covidxr import device
from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.data.synth import generate

STAGES = {
    "extract",
    "score",
    "audit-occlusion",
    "feature-maps",
    "cam",
    "mc-dropout",
    "engine",
    "export-parity",
    "lungs",
}


class Busy:
    """The GPU's utilisation sampled by NVML every 0.2 s while a block runs (None where NVML is missing)."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()

    def __enter__(self) -> Busy:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            return self

        def sample() -> None:
            while not self._stop.is_set():
                self.samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                time.sleep(0.2)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    @property
    def share(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def _part(args: tuple[Path, int, int, int]) -> Path:
    folder, n, seed, size = args
    return generate(folder, n=n, seed=seed, size=size).parent


def films(root: Path, n: int, size: int = 160, parts: int = 8) -> list[Path]:
    """`n` phantoms written by several processes (one folder each, patients distinct by seed)."""
    with Pool(parts) as pool:
        return pool.map(_part, [(root / f"part{k}", n // parts, 100 + k, size) for k in range(parts)])


def step(results: dict[str, Any], name: str, work: Callable[[], Any]) -> None:
    """One part of the benchmark: its numbers, or its error, never the end of the script."""
    start = time.perf_counter()
    try:
        results[name] = work()
    except Exception as exc:
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-1500:]}
    print(f"[{name}] {time.perf_counter() - start:.1f} s: {json.dumps(results[name], default=str)[:600]}", flush=True)


def stages(root: Path, acc: str) -> dict[str, Any]:
    from covidxr.evaluation.job import evaluate_run
    from covidxr.explain.job import explain_images
    from covidxr.lungs.segment import segment_files
    from covidxr.lungs.segmenter import SegmenterSpec, build_net, load_lung_model, save_lung_model
    from covidxr.pipeline import run
    from covidxr.run import Run
    from covidxr.serve.export import export_run
    from covidxr.serve.predict import predict_to_file

    generate(root / "ph", n=240, seed=3)
    device.used.clear()
    tc = TrainConfig(accelerator=acc, lr=1e-3, num_workers=4, cache_dir=str(root / "cache"))
    start = time.perf_counter()
    result = run(Config(DataConfig(paths=(str(root / "ph"),)), tc), root / "run")
    seconds = {"run": round(time.perf_counter() - start, 1)}
    r = Run(root / "run")
    test = [r.listed.abspath(x) for x in r.records("test", listed=True)][:16]
    spec = SegmenterSpec()
    (root / "lungs").mkdir()
    save_lung_model(root / "lungs", spec, build_net(spec)[0])
    with device.use(acc):
        for name, work in (
            ("evaluate_tta", lambda: evaluate_run(r, n_resamples=50, tta=True)),
            ("predict", lambda: predict_to_file(r, test, root / "p.csv", workers=2)),
            ("export", lambda: export_run(r, "onnx")),
            ("explain", lambda: explain_images(r, test[:2], root / "explain", mc_passes=10)),
            ("lungs_segment", lambda: segment_files(load_lung_model(root / "lungs"), test[:8], root / "seg", 8)),
        ):
            t = time.perf_counter()
            work()
            seconds[name] = round(time.perf_counter() - t, 2)
    kinds: dict[str, set[str]] = {}
    for stage, kind in device.used:
        kinds.setdefault(stage, set()).add(kind)
    return {
        "seconds": seconds,
        "test_auc": round(result.metrics.test.metrics["roc_auc"], 4),
        "stage_devices": {k: sorted(v) for k, v in sorted(kinds.items())},
        "missing_stages": sorted(STAGES - set(kinds)),
        "every_stage_on_the_gpu": all(v == {"cuda"} for v in kinds.values()) and set(kinds) >= STAGES,
    }


def agreement(root: Path, acc: str) -> dict[str, Any]:
    from covidxr.data.readers import read_image
    from covidxr.run import Run
    from covidxr.serve.engine import TorchEngine

    r = Run(root / "run")
    records = r.records("test")[:32]
    batch = torch.stack([r.spec.preprocess(read_image(r.manifest.abspath(x)).pixels) for x in records]).numpy()
    with device.use("cpu"):
        on_cpu = TorchEngine(r).logits(batch)
    with device.use(acc):
        on_gpu = TorchEngine(r).logits(batch)
    return {"films": len(batch), "max_abs_logit_diff_fp32": float(np.abs(on_cpu - on_gpu).max()), "target": 1e-4}


def _prepared(folders: list[Path], size: int = 224) -> tuple[Any, Any, Any]:
    """The big set checked once, its films in the film cache at `size`, and a dataset over them."""
    from covidxr.data.dataset import XrayDataset
    from covidxr.data.film_cache import cached_films, film_store
    from covidxr.data.labels import LabelMap
    from covidxr.data.prepare import usable_data
    from covidxr.models.factory import spec_from_config

    cfg = DataConfig(paths=tuple(str(f) for f in folders))
    manifest = usable_data(cfg)
    lm = LabelMap.from_labels(manifest.labels, "binary")
    spec = spec_from_config(TrainConfig(input_size=size).resolved(), lm)
    store = film_store(Path(tempfile.gettempdir()) / "bench-gpu-cache", spec.preprocess, None, cfg.max_pixels)
    rows = cached_films(store, manifest.root, manifest.records, spec.preprocess, cfg.max_pixels, workers=8)
    return manifest, spec, XrayDataset(manifest.root, manifest.records, lm, spec.preprocess, films=rows)


def extraction(folders: list[Path], acc: str) -> dict[str, Any]:
    from covidxr.models.factory import build_initialised
    from covidxr.training.feature_cache import extract

    _manifest, spec, data = _prepared(folders)
    net, _ = build_initialised(spec, "imagenet")
    out: dict[str, Any] = {"films": len(data)}
    subset = torch.utils.data.Subset(data, range(min(len(data), 600)))
    for name, accel, precision, items in (
        ("cpu_fp32", "cpu", "32-true", subset),
        ("gpu_fp32", acc, "32-true", data),
        ("gpu_bf16", acc, "bf16-mixed", data),
    ):
        with device.use(accel, precision), Busy() as busy:
            extract(net.backbone, items, 64, 0, "warm-up") if name != "cpu_fp32" else None
            t = time.perf_counter()
            extract(net.backbone, items, 256 if accel != "cpu" else 64, 8, name)
            out[name] = {"films_per_s": round(len(items) / (time.perf_counter() - t), 1), "gpu_busy": busy.share}
    out["gpu_bf16_vs_cpu"] = round(out["gpu_bf16"]["films_per_s"] / out["cpu_fp32"]["films_per_s"], 1)
    return out


def _mixed(acc: str) -> str:
    """bf16 on a GPU; fp32 on a CPU (bf16 autocast there is slower than fp32 on most CPUs)."""
    return "32-true" if acc == "cpu" else "bf16-mixed"


def _epochs(run_dir: Path) -> list[float]:
    with (run_dir / "history.csv").open() as fh:
        return [float(r["seconds"]) for r in csv.DictReader(fh)]


def fine_tuning(folders: list[Path], root: Path, acc: str, workers: int) -> dict[str, Any]:
    from covidxr.training.job import train

    paths = tuple(str(f) for f in folders)
    tc = TrainConfig(freeze="full", accelerator=acc, devices="1", precision=_mixed(acc), epochs=4, patience=4,
                     batch_size=128, lr=1e-4, augment="none", num_workers=workers,
                     cache_dir=str(root / "ftcache"))  # fmt: skip
    with Busy() as busy:
        result = train(Config(DataConfig(paths=paths), tc), root / "ft")
    with (root / "ft" / "splits.csv").open() as fh:
        n_train = sum(r["split"] == "train" for r in csv.DictReader(fh))
    epochs = _epochs(root / "ft")
    steady = float(np.median(epochs[1:])) if len(epochs) > 1 else epochs[0]
    covidxr_rate = n_train / steady
    bare_rate, bare_busy = _bare_loop(folders, n_train, acc)
    return {
        "train_films": n_train, "epoch_s": [round(e, 2) for e in epochs], "epochs_run": result.epochs_run,
        "covidxr_films_per_s": round(covidxr_rate, 1), "covidxr_gpu_busy_run": busy.share,
        "bare_films_per_s": round(bare_rate, 1), "bare_gpu_busy": bare_busy,
        "covidxr_vs_bare": round(covidxr_rate / bare_rate, 2), "targets": ">= 0.8x bare, >= 2000 films/s, busy >= 80%",
    }  # fmt: skip


def _bare_loop(folders: list[Path], n: int, acc: str) -> tuple[float, float | None]:
    """The same network and optimiser over the same films decoded into memory beforehand: the ceiling."""
    from covidxr.models.factory import apply_freeze, build_initialised

    _, spec, data = _prepared(folders)
    x = torch.stack([data[i][0] for i in range(min(n, len(data)))])
    y = torch.tensor([data.targets[i] for i in range(len(x))])
    place = device.resolve(acc, _mixed(acc))
    net, _ = build_initialised(spec, "imagenet")
    apply_freeze(net, "full", 1)
    net = net.to(place.device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=place.device.type == "cuda")
    x, y = x.pin_memory() if place.pin_memory else x, y
    times = []
    with Busy() as busy:
        for _ in range(3):
            t = time.perf_counter()
            for i in range(0, len(x), 128):
                xb = place.put(x[i : i + 128]).contiguous(memory_format=torch.channels_last)
                yb = torch.nn.functional.one_hot(place.put(y[i : i + 128]), 2).float()
                with place.autocast():
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(net(xb).float(), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if place.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return len(x) / float(np.median(times[1:])), busy.share


def lung_crop(folders: list[Path], root: Path, acc: str, workers: int) -> dict[str, Any]:
    from covidxr.lungs.segmenter import SegmenterSpec, build_net, save_lung_model
    from covidxr.training.job import train

    spec = SegmenterSpec()
    (root / "lm").mkdir(exist_ok=True)
    save_lung_model(root / "lm", spec, build_net(spec)[0])
    paths = tuple(str(f) for f in folders)
    out: dict[str, Any] = {}
    for lungs in ("none", "crop"):
        tc = TrainConfig(freeze="full", accelerator=acc, devices="1", precision=_mixed(acc), epochs=3, patience=3,
                         batch_size=128, lr=1e-4, augment="xray", augment_copies=0, num_workers=workers,
                         lungs=lungs, lung_model=str(root / "lm") if lungs != "none" else None,
                         cache_dir=str(root / f"lc-{lungs}"))  # fmt: skip
        t = time.perf_counter()
        train(Config(DataConfig(paths=paths), tc), root / f"lc-{lungs}-run")
        epochs = _epochs(root / f"lc-{lungs}-run")
        out[lungs] = {"wall_s": round(time.perf_counter() - t, 1), "epoch_s": [round(e, 2) for e in epochs]}
    crop, none = np.median(out["crop"]["epoch_s"]), np.median(out["none"]["epoch_s"])
    out["crop_vs_none_epoch"] = round(float(crop / none), 2)
    out["target"] = "<= 1.15x"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--accelerator", default="gpu")
    parser.add_argument("--films", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None, help="also write the results here")
    parser.add_argument("--only", default="stages,agreement,extraction,fine_tuning,lung_crop")
    parser.add_argument("--result", default=None, help="with --accelerator cpu: write benchmarks/results/NAME.json")
    args = parser.parse_args()
    acc = args.accelerator
    if acc != "cpu" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark runs where a GPU is present (or pass --accelerator cpu)")
    results: dict[str, Any] = {"films": args.films, "workers": args.workers}
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        big = films(root / "big", args.films)
        parts: dict[str, Callable[[], Any]] = {
            "stages": lambda: stages(root, acc),
            "agreement": lambda: agreement(root, acc),
            "extraction": lambda: extraction(big, acc),
            "fine_tuning": lambda: fine_tuning(big, root, acc, args.workers),
            "lung_crop": lambda: lung_crop(big, root, acc, args.workers),
        }
        for name, work in parts.items():
            if name in only:
                step(results, name, work)
    if args.out:  # where the device machine hands results back: the file benchmarks/results/gpu.json becomes
        args.out.write_text(json.dumps(result_body("gpu", results), indent=2, default=str) + "\n")
    if acc != "cpu" or args.result:
        write_result(args.result or "gpu", results)


if __name__ == "__main__":
    main()
