"""Servers the tests start on loopback as users start them: a free port, and `covidxr serve` up and ready."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(run_dir: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    """`covidxr serve RUN` on a free loopback port, once `/ready` answers (or it died, or 120 s passed)."""
    port = free_port()
    command = [sys.executable, "-m", "covidxr", "serve", str(run_dir), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen([*command, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return proc, url
