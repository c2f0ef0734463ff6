"""A backbone cut into a frozen trunk and its last k stages, so `--freeze last-k` can cache the trunk's output
once (the feature-cache idea one level up) and train only the tail and the head on it.

Only backbones whose forward is a plain chain of timm's coarse stages can be cut (EfficientNet, ResNet, the
study's CNN, torchxrayvision's models); the cut is checked numerically against the whole backbone before it is used.
"""

from __future__ import annotations

import torch
from torch import nn

from covidxr.models.simple_cnn import SimpleCNN

CUT_TOLERANCE = 1e-4


def stages(backbone: nn.Module) -> list[nn.Module] | None:
    """The backbone as its coarse stages in forward order (the groups `last_k` counts), or None."""
    from timm.models.efficientnet import EfficientNet
    from timm.models.resnet import ResNet

    from covidxr.models.xrv import XrvBackbone

    if isinstance(backbone, SimpleCNN):
        return list(backbone.blocks)
    if isinstance(backbone, XrvBackbone):
        return backbone.stages()
    part = backbone.get_submodule
    if isinstance(backbone, EfficientNet):
        head = nn.Sequential(part("conv_head"), part("bn2"))
        return [nn.Sequential(part("conv_stem"), part("bn1")), *part("blocks").children(), head]
    if isinstance(backbone, ResNet):
        stem = nn.Sequential(part("conv1"), part("bn1"), part("act1"), part("maxpool"))
        return [stem, *(part(f"layer{i}") for i in range(1, 5))]
    return None


def _pool(backbone: nn.Module) -> nn.Module:
    from covidxr.models.xrv import XrvBackbone

    if isinstance(backbone, XrvBackbone):
        return backbone.pool
    if isinstance(backbone, SimpleCNN):
        return nn.Sequential(backbone.pool, nn.Flatten(1))
    return backbone.get_submodule("global_pool")  # timm's SelectAdaptivePool2d, flattening (num_classes=0)


def split_trunk(
    backbone: nn.Module, last_k: int, input_size: int, channels: int = 3
) -> tuple[nn.Module, nn.Module] | None:
    """(trunk, tail) with tail(trunk(x)) == backbone(x), the tail holding the last k stages and the pooling;
    None when this backbone cannot be cut or the cut does not reproduce it."""
    parts = stages(backbone)
    if parts is None or not 1 <= last_k < len(parts):
        return None
    trunk = nn.Sequential(*parts[: len(parts) - last_k])
    tail = nn.Sequential(*parts[len(parts) - last_k :], _pool(backbone))
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        x = torch.randn(2, channels, input_size, input_size, generator=torch.Generator().manual_seed(0))
        same = torch.allclose(tail(trunk(x)), backbone(x), atol=CUT_TOLERANCE)
    backbone.train(was_training)
    return (trunk, tail) if same else None
