"""Layer outputs by forward hooks: feature maps per stage, and which channels never fire (dead filters)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from covidxr.device import current
from covidxr.models.factory import CovidxrNet
from covidxr.models.simple_cnn import SimpleCNN
from covidxr.results import DeadFilters, WeightStats

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU)
DEAD_EPS = 1e-6


def stage_layers(net: CovidxrNet) -> list[str]:
    """The stem and the end of each stage (timm's feature_info; simple_cnn: each block; torchxrayvision's
    models: the last module of each stage), as backbone paths."""
    from covidxr.models.xrv import XrvBackbone

    backbone = net.backbone
    if isinstance(backbone, SimpleCNN):
        return [f"blocks.{i}" for i in range(len(backbone.blocks))]
    if isinstance(backbone, XrvBackbone):
        return backbone.stage_ends()
    info = getattr(backbone, "feature_info", None)
    names = [f["module"] for f in info] if info is not None else []
    return [n for n in names if n]


@contextmanager
def capture(module: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Outputs of the named submodules during forward passes inside the block."""
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        sub = module.get_submodule(name)
        handles.append(sub.register_forward_hook(lambda _m, _i, out, n=name: outputs.__setitem__(n, out.detach())))
    try:
        yield outputs
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def feature_maps(net: CovidxrNet, x: torch.Tensor, layers: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Activations (C, H, W) of each chosen layer for one image tensor (3, H, W)."""
    layers = layers or stage_layers(net)
    place = current().stage("feature-maps")
    place.module(net).eval()
    with capture(net.backbone, layers) as outputs:
        net.backbone(place.put(x[None]))
    return {name: outputs[name][0].float().cpu() for name in layers}


@torch.no_grad()
def dead_filters(net: CovidxrNet, batches: list[torch.Tensor]) -> list[DeadFilters]:
    """Per activation layer: channels whose output stays (almost) zero on every image and position; and per
    convolution: filters with near-zero weight norm. Pruning candidates, in the study's sense."""
    place = current().stage("dead-filters")
    place.module(net).eval()
    act_names = [n for n, m in net.backbone.named_modules() if isinstance(m, ACTIVATIONS) and n]
    peak: dict[str, torch.Tensor] = {}
    with capture(net.backbone, act_names) as outputs:
        for x in batches:
            outputs.clear()
            net.backbone(place.put(x))
            for name, out in outputs.items():
                if out.dim() == 4:
                    m = out.abs().amax(dim=(0, 2, 3))
                    peak[name] = torch.maximum(peak[name], m) if name in peak else m
    rows = []
    for name, m in peak.items():
        dead = int((m <= DEAD_EPS).sum())
        rows.append(DeadFilters(name, "activation", len(m), dead, dead / len(m)))
    for name, conv in net.backbone.named_modules():
        if isinstance(conv, nn.Conv2d):
            norms = conv.weight.flatten(1).norm(dim=1)
            weak = int((norms <= 1e-3 * max(float(norms.max()), 1e-12)).sum()) if float(norms.max()) > 0 else len(norms)
            rows.append(DeadFilters(name, "weights", len(norms), weak, weak / len(norms)))
    return rows


def weight_stats(net: CovidxrNet) -> list[WeightStats]:
    rows = []
    for name, conv in net.backbone.named_modules():
        if isinstance(conv, nn.Conv2d):
            w = conv.weight.detach()
            rows.append(WeightStats(name, list(w.shape), float(w.mean()), float(w.std()), float(w.abs().max())))
    return rows


def first_conv(net: CovidxrNet) -> nn.Conv2d:
    return next(m for m in net.backbone.modules() if isinstance(m, nn.Conv2d))


def top_channels(maps: torch.Tensor, k: int = 16) -> np.ndarray:
    """The k most active channels of a (C, H, W) map, each scaled to [0, 1]."""
    order = maps.flatten(1).mean(dim=1).argsort(descending=True)[:k]
    chosen = maps[order].float()
    lo = chosen.flatten(1).min(dim=1).values[:, None, None]
    hi = chosen.flatten(1).max(dim=1).values[:, None, None]
    return ((chosen - lo) / (hi - lo).clamp(min=1e-8)).numpy()
