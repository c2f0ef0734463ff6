"""Class activation maps through pytorch-grad-cam, for every head the project builds: the study's two sigmoid
outputs, a single logit, or softmax classes. The target layer comes from the backbone registry (overridable).
The method is LayerCAM (Jiang et al. 2021: each position weighted by its own positive gradient, not one weight
per channel), chosen in benchmarks/bench_localisation.py on phantoms: at the Lite models' 14 x 14 stage it
points at the lesion in every film (Grad-CAM there 0.45, Grad-CAM at the last 7 x 7 map 0.53)."""

from __future__ import annotations

import numpy as np
import torch
from pytorch_grad_cam import GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from covidxr.device import current
from covidxr.models.ensemble import EnsembleNet
from covidxr.models.factory import CovidxrNet
from covidxr.models.registry import get_backbone
from covidxr.models.spec import ModelSpec

CAM_METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "hirescam": HiResCAM,
    "elementwise": GradCAMElementWise,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
}
DEFAULT_CAM_METHOD = "layercam"


def cam_name(spec: ModelSpec, layer: str | None = None, method: str = DEFAULT_CAM_METHOD) -> str:
    """What a CAM was taken with, as the run's files record it: `layercam at blocks.4`."""
    return f"{method} at {layer or get_backbone(spec.backbone).cam_layer}"


def target_layer(net: torch.nn.Module, spec: ModelSpec, override: str | None = None) -> torch.nn.Module:
    return net.get_submodule(f"backbone.{override or get_backbone(spec.backbone).cam_layer}")


def cam_targets(logits: torch.Tensor, spec: ModelSpec, which: str) -> list[int]:
    """Output index per image: `positive` (the positive class) or `predicted`."""
    if logits.shape[1] == 1:  # a single-logit head has one output to explain
        return [0] * len(logits)
    if which == "positive":
        k = spec.classes.index(spec.positive) if spec.positive in spec.classes else 1
        return [k] * len(logits)
    return spec.decide(spec.scores(logits).numpy()).tolist()  # calibrated scores, the run's own rule


def grad_cam(
    net: CovidxrNet,
    spec: ModelSpec,
    x: torch.Tensor,
    which: str = "predicted",
    layer: str | None = None,
    method: str = DEFAULT_CAM_METHOD,
) -> np.ndarray:
    """CAMs (B, H, W) in [0, 1] at the input size for a batch x (B, 3, H, W). An ensemble's CAM is the mean of
    its members' CAMs for the class the ensemble decided."""
    place = current().stage("cam")
    net = place.module(net).eval()  # type: ignore[assignment]
    x = place.put(x)
    with torch.no_grad():
        logits = net(x).float().cpu()
    targets = [ClassifierOutputTarget(k) for k in cam_targets(logits, spec, which)]
    members = list(zip(net.members, net.specs, strict=True)) if isinstance(net, EnsembleNet) else [(net, spec)]
    maps = []
    for member, member_spec in members:
        with CAM_METHODS[method](model=member, target_layers=[target_layer(member, member_spec, layer)]) as cam:
            maps.append(cam(input_tensor=x, targets=targets))
    return np.mean(maps, axis=0)


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Heatmap over the original image (its own size): uint8 RGB (H, W, 3), drawn by pytorch-grad-cam."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    h, w = gray.shape
    heat = cv2.resize(cam.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    base = np.repeat(np.clip(gray, 0, 1)[..., None], 3, axis=2).astype(np.float32)
    return show_cam_on_image(base, heat, use_rgb=True, image_weight=1 - alpha)
