"""A page opened in Debian's chromium (headless): how many images it shows and how many of them are broken."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROBE = (
    "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
    " const broken = imgs.filter(i => !i.complete || i.naturalWidth === 0).length;"
    " document.title = `images:${imgs.length} broken:${broken}`; });</script></body>"
)


def images_in_chromium(html: Path, tmp_path: Path) -> tuple[int, int]:
    """(images, broken) once the page has loaded; skips where chromium is missing (.ci/run installs it)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian chromium is not installed here (.ci/run installs it in CI)")
    page = tmp_path / "probed.html"
    page.write_text(html.read_text().replace("</body>", PROBE))
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
    ]  # fmt: skip
    out = subprocess.run([browser, *flags, page.as_uri()], capture_output=True, text=True, timeout=120)
    title = out.stdout.split("<title>")[1].split("</title>")[0]
    return int(title.split("images:")[1].split()[0]), int(title.split("broken:")[1])
