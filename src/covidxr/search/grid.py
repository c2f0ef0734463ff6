"""Search-space files: YAML mapping of a training field to the list of values to try (a grid), or, for the
tpe and random samplers, to a range `{low: 1e-5, high: 1e-2, log: true}` (integers when both ends are)."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from covidxr.config import Config, TrainConfig
from covidxr.errors import CovidxrError


@dataclass(frozen=True)
class Range:
    """A numeric interval for the samplers that draw (tpe, random); a grid cannot enumerate it."""

    low: float
    high: float
    log: bool = False

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not self.log

    def ends(self) -> list[Any]:
        return [self.low, self.high]


Grid = dict[str, list[Any]]
Space = Mapping[str, "list[Any] | Range"]  # read-only: a Grid is a Space


def load_grid(path: Path | str) -> Space:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CovidxrError(f"{path}: cannot read grid ({exc})") from exc
    if not isinstance(raw, dict) or not raw:
        raise CovidxrError(f"{path}: a grid is a mapping of training field -> list of values")
    known = {f.name for f in fields(TrainConfig)}
    grid: dict[str, list[Any] | Range] = {}
    for name, values in raw.items():
        if name not in known:
            raise CovidxrError(f"{path}: {name!r} is not a training field; known: {', '.join(sorted(known))}")
        if isinstance(values, dict):
            grid[name] = _range(path, name, values)
            continue
        values = values if isinstance(values, list) else [values]
        if not values or not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise CovidxrError(f"{path}: {name} needs a list of plain values (numbers, strings), got {values!r}")
        grid[name] = values
    return grid


def _range(path: Path, name: str, raw: dict[str, Any]) -> Range:
    low, high, log = raw.get("low"), raw.get("high"), raw.get("log", False)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if set(raw) - {"low", "high", "log"} or not numbers or not isinstance(log, bool) or not low < high:  # type: ignore[operator]
        raise CovidxrError(f"{path}: {name} range needs numbers low < high (and optional log: true), got {raw!r}")
    if log and low <= 0:  # type: ignore[operator]
        raise CovidxrError(f"{path}: {name} log range needs low > 0, got {low}")
    return Range(low, high, log)  # type: ignore[arg-type]


def as_grid(space: Space) -> Grid:
    """The space as a grid, or the clear error when it holds a range (only a drawing sampler can search that)."""
    ranges = [name for name, values in space.items() if isinstance(values, Range)]
    if ranges:
        raise CovidxrError(f"{', '.join(ranges)}: a range needs --sampler tpe or random; a grid lists values")
    return {name: list(values) for name, values in space.items() if not isinstance(values, Range)}


def grid_points(space: Space) -> list[dict[str, Any]]:
    grid = as_grid(space)
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
