"""Serving measurements, each against its baseline in the same run:

1. ONNX Runtime vs PyTorch eager, images/s on CPU at batch 8, resnet50 and Lite0 (target ONNX >= 1.5x on resnet50).
2. The web service on loopback: p50/p95 latency of single-image requests without and with Grad-CAM, and
   throughput with 8 concurrent clients vs one client; concurrent `cam=true&mc=10` throughput (8 clients vs 1)
   with a network copy per worker vs one copy shared under a lock (serialised CAM/MC), the design choice.
3. `covidxr predict` over 1,000 and 10,000 generated images: peak RSS (target <= 3 GiB and flat).

Usage: python -m benchmarks.bench_serve [--only cam]   (--only cam: just the CAM concurrency part, merged)
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import torch

from benchmarks.common import RESULTS, write_result
from covidxr.config import Config, DataConfig, TrainConfig
from covidxr.data.synth import generate
from covidxr.models.factory import build_model, spec_for
from covidxr.serve.export import export_onnx
from covidxr.training.job import train


def engines_speed(root: Path, name: str, batch: int = 8, steps: int = 5, repeats: int = 3) -> dict[str, float]:
    spec = spec_for(name, ["a", "b"], "binary", "b")
    net = build_model(spec, "none").eval()
    x = torch.randn(batch, 3, spec.input_size, spec.input_size)
    session = ort.InferenceSession(str(export_onnx(net, x, root / f"{name}.onnx")), providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}

    def rate(fn) -> float:  # type: ignore[no-untyped-def]
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        return batch * steps / (time.perf_counter() - start)

    torch_runs, onnx_runs = [], []
    for _ in range(repeats):  # alternate, so machine drift hits both
        with torch.no_grad():
            torch_runs.append(rate(lambda: net(x)))
        onnx_runs.append(rate(lambda: session.run(None, feed)))
    t, o = statistics.median(torch_runs), statistics.median(onnx_runs)
    return {"torch_images_per_s": round(t, 2), "onnx_images_per_s": round(o, 2), "ratio": round(o / t, 2)}


def _start(app, port: int):  # type: ignore[no-untyped-def]
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert app.state.ready.wait(120)
    while not server.started:
        time.sleep(0.05)
    return server, thread


def service(run_dir: Path, image: bytes) -> dict[str, float]:
    from covidxr.serve.app import create_app

    server, thread = _start(create_app(run_dir), 8765)
    url = "http://127.0.0.1:8765"

    def request(cam: bool = False) -> float:
        start = time.perf_counter()
        r = httpx.post(f"{url}/v1/predict", params={"cam": cam}, files={"file": ("x.png", image)}, timeout=60)
        assert r.status_code == 200, r.text
        return time.perf_counter() - start

    plain = [request() for _ in range(40)]
    with_cam = [request(cam=True) for _ in range(20)]
    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: request(), range(80)))
    concurrent = 80 / (time.perf_counter() - start)
    server.should_exit = True
    thread.join(timeout=10)
    pct = lambda v, q: round(1000 * float(np.percentile(v, q)), 1)  # noqa: E731
    return {
        "p50_ms": pct(plain, 50), "p95_ms": pct(plain, 95), "cam_p50_ms": pct(with_cam, 50),
        "cam_p95_ms": pct(with_cam, 95), "one_client_images_per_s": round(1 / statistics.mean(plain), 2),
        "eight_clients_images_per_s": round(concurrent, 2),
    }  # fmt: skip


def cam_concurrency(run_dir: Path, image: bytes, workers: int = 4, n: int = 24) -> dict[str, Any]:
    """Throughput of `cam=true&mc=10` requests, 1 client vs 8, with one network copy per worker (the service's
    default) and with a single copy every CAM/MC request waits for (serialised)."""
    from covidxr.serve.app import create_app

    out: dict[str, Any] = {}
    for name, replicas in (("copy_per_worker", workers), ("serialised", 1)):
        server, thread = _start(create_app(run_dir, workers=workers, cam_replicas=replicas), 8766)

        def one(_: int, url: str = "http://127.0.0.1:8766/v1/predict") -> None:
            r = httpx.post(url, params={"cam": True, "mc": 10}, files={"file": ("x.png", image)}, timeout=120)
            assert r.status_code == 200, r.text

        one(0)  # warm-up
        rates = {}
        for clients in (1, 8):
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(one, range(n)))
            rates[clients] = n / (time.perf_counter() - start)
        server.should_exit = True
        thread.join(timeout=10)
        out[name] = {
            "one_client_per_s": round(rates[1], 2),
            "eight_clients_per_s": round(rates[8], 2),
            "eight_vs_one": round(rates[8] / rates[1], 2),
        }
    out["copy_vs_serialised_8_clients"] = round(
        out["copy_per_worker"]["eight_clients_per_s"] / out["serialised"]["eight_clients_per_s"], 2
    )
    return out


def predict_rss(run_dir: Path, folder: Path, n: int, out: Path) -> float:
    """Peak RSS (MiB) of a `covidxr predict` process over the first n images."""
    subset = out / f"subset-{n}"
    subset.mkdir()
    files = sorted(folder.iterdir())[:n]
    for f in files:
        (subset / f.name).symlink_to(f)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    command = [sys.executable, "-m", "covidxr", "predict", str(run_dir), str(subset), "--out", str(out / f"p{n}.csv")]
    subprocess.run(command, check=True, capture_output=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(peak, before) / 1024, 1)


def main() -> None:
    only_cam = sys.argv[1:] == ["--only", "cam"]
    with tempfile.TemporaryDirectory() as tmp:
        if only_cam:
            root = Path(tmp)
            generate(root / "ph", n=120, seed=3)
            cfg = Config(DataConfig(paths=(str(root / "ph"),)), TrainConfig(epochs=2, cache_dir=str(root / "cache")))
            run_dir = train(cfg, root / "run").run_dir
            image = sorted((root / "ph" / "images" / "COVID-19").glob("*.png"))[0].read_bytes()
            saved = json.loads((RESULTS / "serve.json").read_text())
            kept = {k: v for k, v in saved.items() if k not in ("benchmark", "date", "machine")}
            write_result("serve", kept | {"cam_concurrency_lite0": cam_concurrency(run_dir, image)})
            return
        root = Path(tmp)
        speed = {name: engines_speed(root, name) for name in ("resnet50", "tf_efficientnet_lite0")}
        generate(root / "ph", n=120, seed=3)
        cfg = Config(DataConfig(paths=(str(root / "ph"),)), TrainConfig(epochs=2, cache_dir=str(root / "cache")))
        run_dir = train(cfg, root / "run").run_dir
        image = sorted((root / "ph" / "images" / "COVID-19").glob("*.png"))[0].read_bytes()
        svc = service(run_dir, image)
        cams = cam_concurrency(run_dir, image)
        many = root / "many"
        many.mkdir()
        sources = sorted((root / "ph" / "images").rglob("*.png"))
        for i in range(10_000):  # 10,000 files (hard links to 120 phantoms): decoding and inference are real
            (many / f"img{i:05d}.png").hardlink_to(sources[i % len(sources)])
        rss = {str(n): predict_rss(run_dir, many, n, root) for n in (1_000, 10_000)}
    write_result(
        "serve",
        {
            "onnx_vs_torch": speed,
            "onnx_target": "resnet50 ratio >= 1.5",
            "service_lite0": svc,
            "cam_concurrency_lite0": cams,
            "predict_peak_rss_mib": rss,
            "predict_rss_target": "<= 3072 MiB and flat from 1,000 to 10,000",
            "predict_rss_ratio_10k_to_1k": round(rss["10000"] / rss["1000"], 3),
        },
    )


if __name__ == "__main__":
    main()
