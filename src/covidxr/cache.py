"""covidxr's cache folder ($COVIDXR_CACHE, else ~/.cache/covidxr): the feature cache and the weight cache live
under it, so one variable moves (or shares) both."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("COVIDXR_CACHE", Path.home() / ".cache" / "covidxr"))
