"""Augmentation: the study's operations on torchvision.transforms.v2, presets, and preview grids."""

from covidxr.augment.ops import OPERATIONS, build_augment
from covidxr.augment.presets import PRESETS, preset

__all__ = ["OPERATIONS", "PRESETS", "build_augment", "preset"]
