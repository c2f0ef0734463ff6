"""Preprocessing choices as types, apart from the code that applies them (data.dataset), so the config and the
CLI can name them without importing PyTorch."""

from __future__ import annotations

from typing import Literal

ResizeMode = Literal["squash", "pad", "crop"]
Equalize = Literal["none", "hist", "clahe"]
