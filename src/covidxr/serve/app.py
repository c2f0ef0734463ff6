"""The web service: `POST /v1/predict`, `GET /v1/model`, `GET /health`, and an upload page at `/`.

The model is loaded once. Inference runs in a thread pool (PyTorch and ONNX Runtime release the GIL), so
concurrent clients do not queue behind one request, and every request has a time limit. Uploads are checked by
size, by content (not by name) and by pixel count before decoding; they are written only to a private temporary
file whose name owes nothing to the client. Bad input gets a 4xx JSON error, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from covidxr import __version__
from covidxr.data.readers import DEFAULT_MAX_PIXELS, Problem, read_image
from covidxr.errors import ImageReadError
from covidxr.models.factory import load_model
from covidxr.serve.engine import load_engine

PAGE = Path(__file__).with_name("static") / "index.html"


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    timeout_s: float = 30.0
    max_mc: int = 100


def sniff(head: bytes) -> str | None:
    """The upload's real type from its first bytes: png, jpeg or dicom; None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return None


def create_app(run_dir: Path | str, engine: str = "torch", limits: Limits | None = None, workers: int = 4) -> FastAPI:
    run_dir = Path(run_dir)
    limits = limits or Limits()
    scorer = load_engine(run_dir, engine)
    net, spec = load_model(run_dir)  # for Grad-CAM and MC dropout, whatever the scoring engine
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="covidxr-infer")
    model_id = f"{run_dir.name}:{spec.backbone}:{engine}"
    app = FastAPI(title="covidxr", version=__version__, description="Research tool, not a diagnostic device.")

    def infer(path: Path, cam: bool, mc: int) -> dict[str, Any]:
        gray = read_image(path, limits.max_pixels).pixels
        x = spec.preprocess(gray)
        scores = scorer.scores(x[None].numpy())[0]
        k = int(scores[1] >= spec.threshold) if spec.task == "binary" else int(np.argmax(scores))
        result: dict[str, Any] = {
            "model_id": model_id,
            "label": spec.classes[k],
            "threshold": spec.threshold,
            "probabilities": {c: float(s) for c, s in zip(spec.classes, scores, strict=True)},
        }
        if cam:
            from covidxr.explain.gradcam import grad_cam, overlay

            heat = grad_cam(net, spec, x[None], "predicted")[0]
            buffer = io.BytesIO()
            Image.fromarray(overlay(gray, heat)).save(buffer, format="PNG")
            result["cam_png_base64"] = base64.b64encode(buffer.getvalue()).decode()
        if mc:
            from covidxr.explain.uncertainty import mc_dropout

            u = mc_dropout(net, x[None], spec, mc)
            result["uncertainty"] = {"passes": mc, "std": float(u["std"][0]), "entropy": float(u["entropy"][0])}
        return result

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "model_id": model_id}

    @app.get("/v1/model")
    def model() -> dict[str, Any]:
        info: dict[str, Any] = {
            "model_id": model_id, "backbone": spec.backbone, "weights": spec.weights, "task": spec.task,
            "classes": spec.classes, "input_size": spec.input_size, "threshold": spec.threshold, "engine": engine,
            "temperature": spec.temperature, "head": spec.head,
        }  # fmt: skip
        report = run_dir / "data_report.json"
        if report.is_file():
            data = json.loads(report.read_text())
            info["training_data"] = {k: data[k] for k in ("source", "usable", "patients", "per_label")}
        metrics = run_dir / "metrics.json"
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            info["test_metrics"] = m["test"]["metrics"]
            info["test_ci95"] = m["test"]["ci95"]
            info["shortcut_warnings"] = (m.get("audit") or {}).get("warnings", [])
        return info

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text()

    @app.post("/v1/predict")
    async def predict(
        file: UploadFile,
        cam: bool = Query(False, description="include a Grad-CAM overlay (base64 PNG)"),
        mc: int = Query(0, ge=0, description="MC-dropout passes for an uncertainty estimate"),
    ) -> dict[str, Any]:
        if mc > limits.max_mc:
            raise HTTPException(422, f"mc may be at most {limits.max_mc}")
        body = await file.read(limits.max_upload_bytes + 1)
        if len(body) > limits.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {limits.max_upload_bytes} bytes")
        if not body:
            raise HTTPException(400, "empty upload")
        kind = sniff(body[:132])
        if kind is None:
            raise HTTPException(415, "not a PNG, JPEG or DICOM file (checked by content, not by name)")
        with tempfile.TemporaryDirectory(prefix="covidxr-upload-") as tmp:
            path = Path(tmp) / ("upload.dcm" if kind == "dicom" else f"upload.{kind}")
            path.write_bytes(body)
            loop = asyncio.get_running_loop()
            try:
                return await asyncio.wait_for(loop.run_in_executor(pool, infer, path, cam, mc), limits.timeout_s)
            except ImageReadError as exc:
                status = 413 if exc.problem == Problem.TOO_LARGE else 422
                raise HTTPException(status, f"{exc.problem}" + (f": {exc.detail}" if exc.detail else "")) from None
            except asyncio.TimeoutError:
                raise HTTPException(503, f"prediction took longer than {limits.timeout_s:.0f} s; try again") from None

    @app.exception_handler(HTTPException)
    async def json_errors(_request: Any, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code)

    return app
