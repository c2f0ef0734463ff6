"""Presets: `seed` (every operation of the study) and `xray` (only what is plausible for a radiograph).

`xray` leaves out: vertical flips (no chest film is upside down), horizontal flips (the heart is on the left;
a mirrored chest is an anatomy the model will never see), and the colour operations (RGB shift, HSV shift,
grayscale): radiographs have no colour, so these either do nothing or invent colour that never occurs.

`xray-strong` is `xray` with strong intensity changes (gamma, contrast, blur, noise): what differs between
hospitals' machines and processing more than between patients, so a model that must ignore it cannot use it to
tell hospitals apart. Measured on unseen hospitals in benchmarks/bench_lungs.py.
"""

from __future__ import annotations

import copy
from typing import Any

from covidxr.errors import CovidxrError

SEED: dict[str, dict[str, Any]] = {
    "rotate": {"p": 0.5, "degrees": 15},
    "shear": {"p": 0.3, "degrees": 10},
    "zoom": {"p": 0.5, "amount": 0.15},
    "hflip": {"p": 0.5},
    "vflip": {"p": 0.5},
    "contrast": {"p": 0.3, "amount": 0.3},
    "rgb_shift": {"p": 0.3, "limit": 0.08},
    "hsv_shift": {"p": 0.3, "hue": 0.05, "saturation": 0.3, "value": 0.1},
    "grayscale": {"p": 0.2},
    "equalize": {"p": 0.2},
    "resize": {"p": 0.3, "low": 0.6},
    "multiply": {"p": 0.3, "low": 0.85, "high": 1.15, "per_channel": True},
    "brightness": {"p": 0.3, "amount": 0.2},
}

XRAY: dict[str, dict[str, Any]] = {
    "rotate": {"p": 0.5, "degrees": 10},
    "shear": {"p": 0.3, "degrees": 5},
    "zoom": {"p": 0.5, "amount": 0.1},
    "contrast": {"p": 0.3, "amount": 0.25},
    "equalize": {"p": 0.1},
    "resize": {"p": 0.3, "low": 0.6},
    "multiply": {"p": 0.3, "low": 0.9, "high": 1.1, "per_channel": False},
    "brightness": {"p": 0.3, "amount": 0.15},
}

XRAY_STRONG: dict[str, dict[str, Any]] = {
    **XRAY,
    "contrast": {"p": 0.5, "amount": 0.5},
    "brightness": {"p": 0.5, "amount": 0.3},
    "gamma": {"p": 0.5, "low": 0.6, "high": 1.7},
    "blur": {"p": 0.3, "sigma": 1.0},
    "noise": {"p": 0.3, "std": 0.04},
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {"seed": SEED, "xray": XRAY, "xray-strong": XRAY_STRONG, "none": {}}


def preset(name: str, overrides: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """A preset's operations, with `overrides` merged per operation (e.g. {"rotate": {"p": 1, "degrees": 5}});
    an override may add an operation the preset leaves out, and {"p": 0} removes one."""
    try:
        ops = copy.deepcopy(PRESETS[name])
    except KeyError:
        raise CovidxrError(f"unknown augmentation preset {name!r}; choose one of {', '.join(PRESETS)}") from None
    for op, params in (overrides or {}).items():
        ops[op] = {**ops.get(op, {}), **params}
    return {op: params for op, params in ops.items() if params.get("p", 0.5) > 0}
