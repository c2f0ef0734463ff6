"""The web service: `POST /v1/predict`, `GET /v1/model`, `GET /health`, `GET /ready`, and an upload page at `/`.

Inference runs in a pool of worker threads (PyTorch and ONNX Runtime release the GIL). Nothing mutable is shared
between concurrent requests: the scoring engine is only ever read, and each worker takes its own copy of the
network for Grad-CAM (which hooks into it) and MC dropout (which switches its dropout on). Admission is bounded:
with every worker busy and the queue full, a request gets 503 with Retry-After instead of piling up; a request
that times out is abandoned at the worker's next step. Uploads are checked by size, by content (not by name) and
by pixel count before decoding; they are written only to a private temporary file whose name owes nothing to
the client. Bad input gets a 4xx JSON error, never a 500. The model loads in the background: `/health` answers
at once, `/ready` only once the model can serve.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import logging
import os
import queue
import secrets
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from torch import nn

from covidxr import __version__
from covidxr.extras import missing_extra

try:
    import python_multipart  # noqa: F401  (FastAPI's uploads need it, and say so only at the first request)
    from fastapi import FastAPI, HTTPException, Query, Request, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse
except ImportError as exc:  # the optional [serve] packages
    raise missing_extra("serve", exc.name) from None
from covidxr.data.readers import DEFAULT_MAX_PIXELS, Problem, read_image
from covidxr.data.validate import read_data_report
from covidxr.errors import ImageReadError
from covidxr.run import Run
from covidxr.rundir import RunDir
from covidxr.serve.engine import Engine, load_engine

PAGE = Path(__file__).with_name("static") / "index.html"
API_KEY_ENV = "COVIDXR_API_KEY"
OPEN_PATHS = frozenset({"/health", "/ready", "/", "/openapi.json", "/docs"})  # no key needed
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    timeout_s: float = 30.0
    max_mc: int = 100
    queue: int = 16  # requests waiting beyond the busy workers before new ones get 503
    retry_after_s: int = 2


class Cancelled(Exception):
    """The request timed out: its worker stops at the next step."""


class Replicas:
    """One copy of the network per worker, handed out one request at a time: Grad-CAM's hooks and MC dropout's
    train-mode switch only ever touch a copy no other request holds."""

    def __init__(self, net: nn.Module, n: int) -> None:
        self._free: queue.Queue[nn.Module] = queue.Queue()
        for _ in range(n):
            self._free.put(copy.deepcopy(net))

    @contextmanager
    def take(self) -> Iterator[nn.Module]:
        net = self._free.get()
        try:
            yield net
        finally:
            self._free.put(net)


class Admission:
    """At most `capacity` requests in the service (running or queued); the rest are turned away at once."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.inside = capacity, 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.inside >= self.capacity:
                return False
            self.inside += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.inside -= 1


@dataclass
class Loaded:
    scorer: Engine
    replicas: Replicas


def sniff(head: bytes) -> str | None:
    """The upload's real type from its first bytes: png, jpeg or dicom; None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    return None


def create_app(
    run_dir: Run | Path | str,
    engine: str = "torch",
    limits: Limits | None = None,
    workers: int = 4,
    api_key: str | None = None,
    cors_origins: tuple[str, ...] = (),
    cam_replicas: int | None = None,
) -> FastAPI:
    """The service for one run. `api_key` (else $COVIDXR_API_KEY) protects everything but health, readiness,
    the page and the schema; `cam_replicas` (default: one per worker) sets how many CAM/MC requests run at once."""
    run = Run.open(run_dir)  # one handle: the spec now, the network once loaded (engine and CAM copies share it)
    run_dir = run.root
    limits = limits or Limits()
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    spec = run.spec  # a wrong run directory fails here, before anything listens
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="covidxr-infer")
    admission = Admission(workers + limits.queue)
    model_id = f"{run_dir.name}:{spec.backbone}:{engine}"
    app = FastAPI(title="covidxr", version=__version__, description="Research tool, not a diagnostic device.")
    app.state.ready = threading.Event()
    app.state.load_error = None
    loaded: list[Loaded] = []

    def load() -> None:
        try:
            scorer = load_engine(run, engine)
            replicas = Replicas(run.net, cam_replicas or workers)  # copies: for Grad-CAM and MC dropout, whatever
            loaded.append(Loaded(scorer, replicas))  # the scoring engine
            app.state.ready.set()
        except Exception as exc:  # reported by /ready; the process stays up to say so
            app.state.load_error = f"{type(exc).__name__}: {exc}"
            log.error("could not load %s: %s", run_dir, app.state.load_error)

    threading.Thread(target=load, name="covidxr-load", daemon=True).start()

    def infer(path: Path, cam: bool, mc: int, cancelled: threading.Event) -> dict[str, Any]:
        model = loaded[0]
        gray = read_image(path, limits.max_pixels).pixels
        x = spec.preprocess(gray)
        scores = model.scorer.scores(x[None].numpy())[0]
        k = int(spec.decide(scores[None])[0])
        result: dict[str, Any] = {
            "model_id": model_id,
            "label": spec.classes[k],
            "threshold": spec.threshold,
            "probabilities": {c: float(s) for c, s in zip(spec.classes, scores, strict=True)},
        }
        if not (cam or mc):
            return result
        with model.replicas.take() as net:
            if cam:
                if cancelled.is_set():
                    raise Cancelled
                from covidxr.explain.gradcam import grad_cam, overlay

                heat = grad_cam(net, spec, x[None], "predicted")[0]  # type: ignore[arg-type]
                buffer = io.BytesIO()
                Image.fromarray(overlay(gray, heat)).save(buffer, format="PNG")
                result["cam_png_base64"] = base64.b64encode(buffer.getvalue()).decode()
            if mc:
                if cancelled.is_set():
                    raise Cancelled
                from covidxr.explain.uncertainty import mc_dropout

                u = mc_dropout(net, x[None], spec, mc)
                result["uncertainty"] = {"passes": mc, "std": float(u["std"][0]), "entropy": float(u["entropy"][0])}
        return result

    if api_key:
        expected = f"Bearer {api_key}".encode()

        @app.middleware("http")
        async def require_key(request: Request, call_next: Any) -> Any:
            given = request.headers.get("authorization", "").encode()
            if request.url.path in OPEN_PATHS or secrets.compare_digest(given, expected):
                return await call_next(request)
            return JSONResponse(
                {"error": "missing or wrong API key: send Authorization: Bearer KEY", "status": 401},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness: the process answers (the model may still be loading; see /ready)."""
        return {"status": "ok", "model_id": model_id}

    @app.get("/ready")
    def ready() -> JSONResponse:
        """Readiness: 200 once the model is loaded and can serve, 503 before (or if loading failed)."""
        if app.state.ready.is_set():
            return JSONResponse({"status": "ready", "model_id": model_id})
        status = f"failed: {app.state.load_error}" if app.state.load_error else "loading"
        return JSONResponse({"status": status, "model_id": model_id}, status_code=503)

    @app.get("/v1/model")
    def model() -> dict[str, Any]:
        info: dict[str, Any] = {
            "model_id": model_id, "backbone": spec.backbone, "weights": spec.weights,
            "weights_sha256": spec.weights_sha256, "channels": spec.channels, "task": spec.task,
            "classes": spec.classes, "input_size": spec.input_size, "threshold": spec.threshold, "engine": engine,
            "temperature": spec.temperature, "head": spec.head, "lungs": spec.lungs, "lung_model": spec.lung_model,
            "adapted_to": spec.extra.get("adapted"),  # the site the run was adapted to (covidxr adapt), else None
        }  # fmt: skip
        data = read_data_report(RunDir(run_dir).data_report)
        if data is not None:
            info["training_data"] = {"source": data.source, "usable": data.usable, "patients": data.patients,
                                     "per_label": data.per_label}  # fmt: skip
        evaluation = RunDir(run_dir).read_evaluation()
        if evaluation is not None:
            info["test_metrics"] = evaluation.test.metrics
            info["test_ci95"] = evaluation.test.ci95
            info["shortcut_warnings"] = evaluation.warnings
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
        if not app.state.ready.is_set():
            raise HTTPException(503, "the model is still loading; try again", headers=_retry(limits))
        if not admission.enter():
            raise HTTPException(503, "every worker is busy and the queue is full; try again", headers=_retry(limits))
        cancelled = threading.Event()
        try:
            with tempfile.TemporaryDirectory(prefix="covidxr-upload-") as tmp:
                path = Path(tmp) / ("upload.dcm" if kind == "dicom" else f"upload.{kind}")
                path.write_bytes(body)
                future = pool.submit(infer, path, cam, mc, cancelled)
                try:
                    return await asyncio.wait_for(asyncio.wrap_future(future), limits.timeout_s)
                except ImageReadError as exc:
                    status = 413 if exc.problem == Problem.TOO_LARGE else 422
                    raise HTTPException(status, f"{exc.problem}" + (f": {exc.detail}" if exc.detail else "")) from None
                except asyncio.TimeoutError:
                    cancelled.set()  # a queued request never starts; a running one stops at its next step
                    raise HTTPException(
                        503, f"prediction took longer than {limits.timeout_s:g} s; try again", headers=_retry(limits)
                    ) from None
        finally:
            admission.leave()

    @app.exception_handler(HTTPException)
    async def json_errors(_request: Any, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code, headers=exc.headers
        )

    return app


def _retry(limits: Limits) -> dict[str, str]:
    return {"Retry-After": str(limits.retry_after_s)}
