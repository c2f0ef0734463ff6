"""Models stage: one registry of backbones, weight resolution (offline first), the study's head, freezing,
and the ModelSpec (`model.json`) that every later stage loads a model from."""

from covidxr.models.factory import build_model, load_model
from covidxr.models.registry import BACKBONES, get_backbone, list_backbones
from covidxr.models.spec import ModelSpec

__all__ = ["BACKBONES", "ModelSpec", "build_model", "get_backbone", "list_backbones", "load_model"]
