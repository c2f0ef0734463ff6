"""The web service: happy path and every bad-input case as a clear 4xx; readiness, API key and CORS; a real
browser uploads an X-ray on the page; 8 concurrent clients mixing plain, Grad-CAM, MC-dropout and malformed
requests get no 5xx and the answers each request gets alone; a saturated service answers 503 and recovers; an
OpenAPI-driven fuzz run finds no 5xx."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from covidxr.serve.app import Limits, create_app
from tests.imagefiles import png_bomb, write_dicom
from tests.servers import serve

pytestmark = pytest.mark.slow  # trains a model or starts a server: in `make test`, not in `make test-fast`


@pytest.fixture(scope="module")
def xray(phantoms: Path) -> Path:
    return sorted((phantoms / "images" / "COVID-19").glob("*.png"))[0]


def _ready(app: FastAPI) -> FastAPI:
    assert app.state.ready.wait(120), app.state.load_error
    return app


@pytest.fixture(scope="module")
def client(run_dir: Path) -> TestClient:
    return TestClient(_ready(create_app(run_dir, limits=Limits(max_upload_bytes=400_000))))


def _post(client: TestClient, name: str, body: bytes, **params: object) -> httpx.Response:
    return client.post("/v1/predict", params=params, files={"file": (name, body, "application/octet-stream")})


def test_predict_happy_path_with_cam_and_uncertainty(client: TestClient, xray: Path) -> None:
    response = _post(client, "x.png", xray.read_bytes(), cam=True, mc=5)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["label"] in ("COVID-19", "not COVID-19") and set(body["probabilities"]) == {"not COVID-19", "COVID-19"}
    assert body["uncertainty"]["passes"] == 5 and body["uncertainty"]["std"] >= 0
    overlay = Image.open(io.BytesIO(base64.b64decode(body["cam_png_base64"])))
    assert overlay.size == Image.open(xray).size


def test_dicom_upload(client: TestClient, xray: Path, tmp_path: Path) -> None:
    pixels = np.asarray(Image.open(xray), dtype=np.uint16) * 16
    dicom = write_dicom(tmp_path / "x", pixels, bits_stored=12)  # no extension: type comes from the content
    assert _post(client, "scan", dicom.read_bytes()).status_code == 200


def test_bad_uploads_get_clear_4xx_json(client: TestClient, xray: Path, tmp_path: Path) -> None:
    big = _post(client, "big.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 500_000)
    assert big.status_code == 413 and "larger than" in big.json()["error"]
    wrong = _post(client, "looks-like.png", b"just some text, named .png")
    assert wrong.status_code == 415 and "checked by content" in wrong.json()["error"]
    bomb = _post(client, "bomb.png", png_bomb(tmp_path / "bomb.png").read_bytes())
    assert bomb.status_code == 413 and "too large" in bomb.json()["error"]
    assert _post(client, "empty.png", b"").status_code == 400
    whole = xray.read_bytes()
    broken = _post(client, "cut.png", whole[: len(whole) // 2])
    assert broken.status_code == 422 and "corrupt" in broken.json()["error"]
    garbage = _post(client, "sig.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    assert garbage.status_code == 422 and "not an image" in garbage.json()["error"]
    assert _post(client, "x.png", b"\x89PNG\r\n\x1a\n", mc=1000).status_code == 422
    assert client.post("/v1/predict").status_code == 422  # no file at all


def test_health_model_docs_and_page(client: TestClient, run_dir: Path) -> None:
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/v1/model").json()
    assert info["backbone"] == "tf_efficientnet_lite0" and info["input_size"] == 224
    assert info["temperature"] == json.loads((run_dir / "calibration.json").read_text())["temperature"]
    assert info["training_data"]["usable"] == 120
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/v1/predict", "/v1/model", "/health"}
    assert "not a diagnostic device" in client.get("/").text


@pytest.fixture(scope="module")
def server(run_dir: Path):  # type: ignore[no-untyped-def]
    proc, url = serve(run_dir)
    yield url
    assert proc.poll() is None, "the server died during the tests"
    proc.terminate()
    proc.wait(timeout=30)


def test_upload_in_a_real_browser_shows_label_heatmap_and_warnings_that_wrap(
    run_dir: Path, xray: Path, tmp_path: Path
) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian chromium is not installed here (.ci/run installs it in CI)")
    from playwright.sync_api import sync_playwright

    warned = tmp_path / "run"  # the run, as if its audit had warned in the longest words a source name can have
    shutil.copytree(run_dir, warned)
    metrics = json.loads((warned / "metrics.json").read_text())
    long_source = "Hospital-" + "x" * 200 + "/COVID-19-image-repository"
    warning = f"every COVID-19 film comes from one source ({long_source}): a model can learn it"
    metrics["audit"]["warnings"] = [warning] * 2
    (warned / "metrics.json").write_text(json.dumps(metrics))
    proc, url = serve(warned)
    try:
        with sync_playwright() as p:
            chrome = p.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu"])
            page = chrome.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url)
            page.wait_for_selector("#facts:not(:empty)", timeout=60_000)
            warnings = page.eval_on_selector_all("#warnings li", "items => items.map(i => i.textContent)")
            overflowing = page.evaluate(
                "() => [...document.querySelectorAll('#model, #model *')]"
                ".filter(e => e.scrollWidth > e.clientWidth + 1).length"
                " + (document.documentElement.scrollWidth > window.innerWidth ? 1 : 0)"
            )
            page.set_input_files("#file", str(xray))
            page.wait_for_selector("#result:not([hidden])", timeout=60_000)
            label = page.text_content("#label")
            loaded = page.eval_on_selector("#heatmap", "img => img.complete && img.naturalWidth > 0")
            chrome.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert label in ("COVID-19", "not COVID-19") and loaded
    assert len(warnings) == 2 and all(w.startswith("Warning: ") and long_source in w for w in warnings)
    assert overflowing == 0  # the model box wraps its long lines at 1,200 px: nothing scrolls sideways


def _cam(body: dict[str, object]) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(str(body["cam_png_base64"])))), dtype=int)


def test_eight_clients_mixing_cam_mc_and_malformed_requests(server: str, phantoms: Path) -> None:
    images = sorted((phantoms / "images").rglob("*.png"))[:8]
    bodies = [p.read_bytes() for p in images]

    def post(body: bytes, **params: object) -> httpx.Response:
        files = {"file": ("x.png", body, "image/png")}
        return httpx.post(f"{server}/v1/predict", params=params, files=files, timeout=120)

    alone = [post(b, cam=True).json() for b in bodies]  # each CAM request made alone, before the crowd

    def client(i: int) -> list[tuple[str, int, dict[str, object]]]:
        out = []
        for j in range(25):
            kind = ("plain", "cam", "mc", "malformed")[(i + j) % 4]
            body = bodies[i][: len(bodies[i]) // 3] if kind == "malformed" else bodies[i]
            params = {"cam": kind == "cam", "mc": 10 if kind == "mc" else 0}
            response = post(body, **params)
            out.append((kind, response.status_code, response.json()))
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(client, range(8)))
    for i, answers in enumerate(results):
        for kind, status, body in answers:
            assert status < 500, (kind, status, body)
            if kind == "malformed":
                assert status == 422 and "corrupt" in str(body["error"])
                continue
            assert status == 200, (kind, body)
            assert body["label"] == alone[i]["label"]
            if kind == "cam":
                assert np.abs(_cam(body) - _cam(alone[i])).max() <= 1  # the CAM this image gets alone
            if kind == "mc":
                assert body["uncertainty"]["std"] > 0  # type: ignore[index]
    assert httpx.get(f"{server}/health", timeout=5).json()["status"] == "ok"


def test_a_saturated_service_answers_503_then_recovers(run_dir: Path, xray: Path) -> None:
    proc, url = serve(run_dir, "--workers", "1", "--queue", "0")
    try:
        files = {"file": ("x.png", xray.read_bytes(), "image/png")}

        def heavy(_: int) -> httpx.Response:
            return httpx.post(f"{url}/v1/predict", params={"cam": True, "mc": 100}, files=files, timeout=120)

        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(heavy, range(6)))
        codes = sorted(a.status_code for a in answers)
        assert 200 in codes and 503 in codes and set(codes) <= {200, 503}, codes
        busy = next(a for a in answers if a.status_code == 503)
        assert busy.headers["retry-after"] and "busy" in busy.json()["error"]
        assert httpx.post(f"{url}/v1/predict", files=files, timeout=60).status_code == 200  # recovered
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_openapi_fuzz_finds_no_server_error(server: str, tmp_path: Path) -> None:
    """Schemathesis generates requests from the service's own OpenAPI schema (loopback only, bounded)."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{server}/openapi.json", "--checks", "not_a_server_error",
        "--max-examples", "30", "--request-timeout", "60", "--generation-deterministic", "--no-color",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its cache stays there
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "/v1/predict" in done.stdout
