"""Serving measurements, each against its baseline in the same run:

1. ONNX Runtime vs PyTorch eager, images/s on CPU at batch 8, resnet50 and Lite0 (target ONNX >= 1.5x on resnet50).
2. The web service on loopback: p50/p95 latency of single-image requests without and with Grad-CAM, and
   throughput with 8 concurrent clients vs one client.
3. `covidxr predict` over 1,000 and 10,000 generated images: peak RSS (target <= 3 GiB and flat).

Usage: python benchmarks/bench_serve.py
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import torch

from benchmarks.common import write_result
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


def service(run_dir: Path, image: bytes) -> dict[str, float]:
    import uvicorn

    from covidxr.serve.app import create_app

    port = 8765
    server = uvicorn.Server(uvicorn.Config(create_app(run_dir), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            httpx.get(f"{url}/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)

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
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        speed = {name: engines_speed(root, name) for name in ("resnet50", "tf_efficientnet_lite0")}
        generate(root / "ph", n=120, seed=3)
        cfg = Config(DataConfig(paths=(str(root / "ph"),)), TrainConfig(epochs=2, cache_dir=str(root / "cache")))
        run_dir = train(cfg, root / "run").run_dir
        image = sorted((root / "ph" / "images" / "COVID-19").glob("*.png"))[0].read_bytes()
        svc = service(run_dir, image)
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
            "predict_peak_rss_mib": rss,
            "predict_rss_target": "<= 3072 MiB and flat from 1,000 to 10,000",
            "predict_rss_ratio_10k_to_1k": round(rss["10000"] / rss["1000"], 3),
        },
    )


if __name__ == "__main__":
    main()
