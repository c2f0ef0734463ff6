"""Preprocessing choices as types, apart from the code that applies them (data.dataset), so the config and the
CLI can name them without importing PyTorch."""

from __future__ import annotations

from typing import Literal, get_args

ResizeMode = Literal["squash", "pad", "crop"]
Equalize = Literal["none", "hist", "clahe"]
LungInput = Literal["none", "crop", "mask"]  # none: the whole film; crop: its own lung box; mask: crop + outside flat
LUNG_INPUTS: tuple[str, ...] = get_args(LungInput)
