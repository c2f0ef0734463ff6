"""Lung segmentation: a small segmenter trained on films with lung masks, and each film's own lung geometry
(mask, box, plausibility) for lung-restricted inputs, audits and CAM checks."""

from covidxr.lungs.geometry import LungGeometry, clean_mask, dice
from covidxr.lungs.segmenter import LungModel, load_lung_model
from covidxr.lungs.view import LungView

__all__ = ["LungGeometry", "LungModel", "LungView", "clean_mask", "dice", "load_lung_model"]
