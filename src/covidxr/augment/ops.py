"""Each study operation as a v2 transform on a [0, 1] RGB tensor, applied with its own probability.

torchvision has no per-channel additive shift (albumentations' RGBShift), per-channel multiply, gamma curve or
noise whose strength is drawn per image: those are the small custom ops. Everything keeps the input size, so
augmentation can run after resizing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torchvision.transforms import v2

from covidxr.errors import CovidxrError


class RGBShift(torch.nn.Module):
    """Add an independent random offset in [-limit, limit] to each channel."""

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = (torch.rand(x.shape[-3], 1, 1) * 2 - 1) * self.limit
        return (x + shift).clamp(0, 1)


class Multiply(torch.nn.Module):
    """Multiply each channel by its own random factor in [low, high] (per_channel) or all by one."""

    def __init__(self, low: float, high: float, per_channel: bool = False) -> None:
        super().__init__()
        self.low, self.high, self.per_channel = low, high, per_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-3] if self.per_channel else 1
        factor = torch.empty(n, 1, 1).uniform_(self.low, self.high)
        return (x * factor).clamp(0, 1)


class Gamma(torch.nn.Module):
    """Raise the image to a random power in [low, high], drawn log-uniformly: exposure and detector curves differ
    between hospitals and bend grey levels non-linearly, which a contrast or brightness change does not."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        if not 0 < low <= high:
            raise CovidxrError(f"augmentation gamma: need 0 < low <= high, got {low}, {high}")
        self.low, self.high = low, high

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_gamma = torch.empty(1).uniform_(math.log(self.low), math.log(self.high))
        return x.clamp(0, 1).pow(log_gamma.exp())


class GaussianNoise(torch.nn.Module):
    """Add zero-mean Gaussian noise whose standard deviation is drawn in [0, std] per image (detector noise and
    dose differ between machines); one noise field for all channels, so a grey film stays grey."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = float(torch.rand(1)) * self.std
        return (x + torch.randn(x.shape[-2:]) * sigma).clamp(0, 1)


def _blur(size: int, sigma: float) -> torch.nn.Module:
    """Gaussian blur with sigma up to `sigma` percent of the side: sharpness filters differ between machines."""
    high = max(0.1, sigma / 100 * size)
    kernel = 2 * math.ceil(2 * high) + 1
    return v2.GaussianBlur(kernel, sigma=(0.1, high))


def _resize(size: int, low: float) -> torch.nn.Module:
    """Down-sample by a random factor and back: the study's resize, as a resolution change at a fixed size."""
    return v2.Compose([v2.RandomResize(max(8, int(size * low)), size + 1, antialias=True), v2.Resize(size)])


# name -> builder(params, input_size); params are the op's own ranges from the config
OPERATIONS: dict[str, Callable[[Mapping[str, Any], int], torch.nn.Module]] = {
    "rotate": lambda p, _: v2.RandomRotation(p.get("degrees", 15)),
    "shear": lambda p, _: v2.RandomAffine(degrees=0, shear=p.get("degrees", 10)),
    "zoom": lambda p, _: v2.RandomAffine(degrees=0, scale=(1 - p.get("amount", 0.15), 1 + p.get("amount", 0.15))),
    "hflip": lambda p, _: v2.RandomHorizontalFlip(1.0),
    "vflip": lambda p, _: v2.RandomVerticalFlip(1.0),
    "contrast": lambda p, _: v2.ColorJitter(contrast=p.get("amount", 0.3)),
    "rgb_shift": lambda p, _: RGBShift(p.get("limit", 0.08)),
    "hsv_shift": lambda p, _: v2.ColorJitter(
        brightness=p.get("value", 0.1), saturation=p.get("saturation", 0.3), hue=p.get("hue", 0.05)
    ),
    "grayscale": lambda p, _: v2.Grayscale(3),
    "equalize": lambda p, _: v2.RandomEqualize(1.0),
    "resize": lambda p, size: _resize(size, p.get("low", 0.6)),
    "multiply": lambda p, _: Multiply(p.get("low", 0.85), p.get("high", 1.15), p.get("per_channel", True)),
    "brightness": lambda p, _: v2.ColorJitter(brightness=p.get("amount", 0.2)),
    "gamma": lambda p, _: Gamma(p.get("low", 0.7), p.get("high", 1.5)),
    "blur": lambda p, size: _blur(size, p.get("sigma", 1.0)),
    "noise": lambda p, _: GaussianNoise(p.get("std", 0.03)),
}


def build_augment(ops: Mapping[str, Mapping[str, Any]], input_size: int) -> v2.Compose | None:
    """`ops`: operation name -> {"p": probability, ...its ranges}. Returns None when nothing is enabled."""
    unknown = sorted(set(ops) - set(OPERATIONS))
    if unknown:
        raise CovidxrError(f"unknown augmentation(s) {unknown}; known: {', '.join(OPERATIONS)}")
    steps = []
    for name, params in ops.items():
        p = float(params.get("p", 0.5))
        if not 0 <= p <= 1:
            raise CovidxrError(f"augmentation {name}: probability p must be in [0, 1], got {p}")
        if p > 0:
            steps.append(v2.RandomApply([OPERATIONS[name](params, input_size)], p=p))
    return v2.Compose(steps) if steps else None
