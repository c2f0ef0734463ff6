"""Grid files: YAML mapping of a training field to the list of values to try."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import fields
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from covidxr.config import Config, TrainConfig
from covidxr.errors import CovidxrError

Grid = dict[str, list[Any]]


def load_grid(path: Path | str) -> Grid:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CovidxrError(f"{path}: cannot read grid ({exc})") from exc
    if not isinstance(raw, dict) or not raw:
        raise CovidxrError(f"{path}: a grid is a mapping of training field -> list of values")
    known = {f.name for f in fields(TrainConfig)}
    grid: Grid = {}
    for name, values in raw.items():
        if name not in known:
            raise CovidxrError(f"{path}: {name!r} is not a training field; known: {', '.join(sorted(known))}")
        values = values if isinstance(values, list) else [values]
        if not values or not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise CovidxrError(f"{path}: {name} needs a list of plain values (numbers, strings), got {values!r}")
        grid[name] = values
    return grid


def grid_points(grid: Grid) -> list[dict[str, Any]]:
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in product(*(grid[n] for n in names))]


def point_key(params: dict[str, Any]) -> str:
    """Stable identity of a grid point, whatever order or process produced it."""
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def apply_params(cfg: Config, params: dict[str, Any]) -> Config:
    out = copy.deepcopy(cfg)
    for name, value in params.items():
        setattr(out.train, name, value)
    return out
