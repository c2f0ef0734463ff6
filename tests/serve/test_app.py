"""The web service: happy path and every bad-input case as a clear 4xx; a real browser uploads an X-ray on the
page; a bounded load test on loopback leaves the server healthy."""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from covidxr.serve.app import Limits, create_app
from tests.imagefiles import png_bomb, write_dicom


@pytest.fixture(scope="module")
def xray(phantoms: Path) -> Path:
    return sorted((phantoms / "images" / "COVID-19").glob("*.png"))[0]


@pytest.fixture(scope="module")
def client(run_dir: Path) -> TestClient:
    return TestClient(create_app(run_dir, limits=Limits(max_upload_bytes=400_000)))


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
    assert info["temperature"] == json.loads((run_dir / "model.json").read_text())["temperature"]
    assert info["training_data"]["usable"] == 120
    assert client.get("/openapi.json").json()["paths"].keys() >= {"/v1/predict", "/v1/model", "/health"}
    assert "not a diagnostic device" in client.get("/").text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(run_dir: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    command = [sys.executable, "-m", "covidxr", "serve", str(run_dir), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def test_upload_in_a_real_browser_shows_label_and_heatmap(server: str, xray: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian chromium is not installed here (.ci/run installs it in CI)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chrome = p.chromium.launch(executable_path=browser, args=["--no-sandbox", "--disable-gpu"])
        page = chrome.new_page()
        page.goto(server)
        page.set_input_files("#file", str(xray))
        page.wait_for_selector("#result:not([hidden])", timeout=60_000)
        label = page.text_content("#label")
        loaded = page.eval_on_selector("#heatmap", "img => img.complete && img.naturalWidth > 0")
        chrome.close()
    assert label in ("COVID-19", "not COVID-19") and loaded


def test_bounded_load_on_loopback(server: str, xray: Path) -> None:
    body = xray.read_bytes()

    def one(_: int) -> int:
        files = {"file": ("x.png", body, "image/png")}
        return httpx.post(f"{server}/v1/predict", files=files, timeout=60).status_code

    with ThreadPoolExecutor(max_workers=8) as clients:
        codes = list(clients.map(one, range(200)))
    assert codes.count(200) == 200
    assert httpx.get(f"{server}/health", timeout=5).json()["status"] == "ok"
