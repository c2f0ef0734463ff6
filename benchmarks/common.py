"""Shared by the benchmark scripts: where results go and what machine produced them."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def result_body(name: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A result as benchmarks/results/NAME.json holds it: the payload with its date and machine."""
    return {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), **payload}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    body = result_body(name, payload)
    path.write_text(json.dumps(body, indent=2) + "\n")
    print(json.dumps(body, indent=2))
    return path
