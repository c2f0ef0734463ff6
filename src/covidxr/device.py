"""Where every network runs: one placement (device and precision) per process, asked by every stage.

Training has Lightning Fabric; every other stage — feature extraction, scoring and TTA, CAM, MC dropout, feature
maps, the lung model, the service, export's parity check — asks `current()` here, so the run's (or the command's)
`--accelerator` and `--precision` decide for all of them alike. The placement is process-wide, not per thread: the
service's inference threads see the one the command set. Each stage names itself when it asks (`stage`), and the
names are recorded, so a test proves on a CPU that every stage went through this helper.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch

from covidxr.errors import CovidxrError

Accelerator = Literal["auto", "cpu", "gpu", "cuda", "mps"]
Precision = Literal["32-true", "16-mixed", "bf16-mixed"]
ACCELERATORS: tuple[str, ...] = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS: tuple[str, ...] = ("32-true", "16-mixed", "bf16-mixed")
_HALF = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}

used: list[tuple[str, str]] = []  # (stage, device type) as stages asked, for tests and logs; bounded below
_USED_KEPT = 256


@dataclass(frozen=True)
class Placement:
    """A device and a precision: networks moved there, batches copied there (pinned and non-blocking on a GPU),
    forward passes under autocast when the precision is mixed; outputs come back as fp32 on the CPU."""

    device: torch.device
    precision: str = "32-true"

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def stage(self, name: str) -> Placement:
        """This placement, recorded as the one `name` runs on."""
        used.append((name, self.device.type))
        del used[:-_USED_KEPT]
        return self

    def module(self, net: torch.nn.Module) -> torch.nn.Module:
        return net.to(self.device)

    def put(self, x: torch.Tensor) -> torch.Tensor:
        if x.device == self.device:
            return x
        if self.pin_memory and x.device.type == "cpu" and not x.is_pinned():
            x = x.pin_memory()
        return x.to(self.device, non_blocking=self.pin_memory)

    def autocast(self) -> AbstractContextManager[Any]:
        dtype = _HALF.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype is not None else nullcontext()

    @torch.no_grad()
    def forward(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """net(x) on this placement (the net already moved here), as fp32 on the CPU."""
        with self.autocast():
            out = net(self.put(x))
        return out.float().cpu()


def resolve(accelerator: str = "auto", precision: str = "32-true", devices: str = "auto") -> Placement:
    """A placement from the CLI's names; a device this machine lacks or an unknown name is one clear error."""
    if accelerator not in ACCELERATORS:
        raise CovidxrError(f"unknown --accelerator {accelerator!r}; choose one of {', '.join(ACCELERATORS)}")
    if precision not in PRECISIONS:
        raise CovidxrError(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if accelerator == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if _mps() else "cpu"
    else:
        kind = "cuda" if accelerator == "gpu" else accelerator
    if kind == "cuda" and not torch.cuda.is_available():
        raise CovidxrError(f"--accelerator {accelerator}: no CUDA GPU is visible to this process")
    if kind == "mps" and not _mps():
        raise CovidxrError("--accelerator mps: no Apple GPU is visible to this process")
    return Placement(torch.device(f"cuda:{_index(devices)}") if kind == "cuda" else torch.device(kind), precision)


def _index(devices: str) -> int:
    """The GPU an inference stage uses: `[k]` or `k,...` names one (its first); a count or auto takes this
    process's local rank (one GPU per process of a distributed run), else GPU 0."""
    text = str(devices).strip()
    if text.startswith("[") or "," in text:
        first = text.strip("[]").split(",")[0].strip()
        return int(first) if first.isdigit() else 0
    return int(os.environ.get("LOCAL_RANK", "0"))


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


_current: Placement | None = None


def current() -> Placement:
    """The placement set by the running command (`use`), else the best this machine has in fp32."""
    global _current
    if _current is None:
        _current = _installed(resolve("auto"))
    return _current


@contextmanager
def use(accelerator: str = "auto", precision: str = "32-true", devices: str = "auto") -> Iterator[Placement]:
    """Every stage inside runs on this placement; the one before is restored after."""
    global _current
    before, _current = _current, _installed(resolve(accelerator, precision, devices))
    try:
        yield _current
    finally:
        _current = before
        if before is not None:
            _installed(before)


def _installed(place: Placement) -> Placement:
    """fp32 means fp32 on a GPU too: no TF32 convolutions or products (they differ from the CPU by ~1e-3), so
    scores on CPU and GPU agree to 1e-4; a mixed precision lets the GPU use them."""
    if place.device.type == "cuda":
        exact = place.precision == "32-true"
        torch.backends.cudnn.allow_tf32 = not exact
        torch.backends.cuda.matmul.allow_tf32 = not exact
    return place
