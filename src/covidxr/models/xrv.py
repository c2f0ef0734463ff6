"""torchxrayvision's chest-X-ray backbones as feature extractors (the optional extra `covidxr[xrv]`).

DenseNet121 is torchxrayvision's own class built without weights; ResNet50 is built as torchxrayvision's
`ResNet` builds it (torchvision's resnet50 with a one-channel first convolution), because that class cannot be
built without downloading its file. Both keep their published parameter names under `net.`, so a published file
loads key for key. Their pooled output is what torchxrayvision's `features2` / `features` return; the stages
are listed so `--freeze last-k` can cut and cache the trunk.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from covidxr.errors import CovidxrError
from covidxr.extras import require
from covidxr.models.registry import Backbone


def xrv_models() -> Any:
    """torchxrayvision's models module, or the clear error naming the extra."""
    require("xrv")
    import torchxrayvision

    return torchxrayvision.models


class XrvBackbone(nn.Module):
    """`net` (the published model, its classifier unused) run as a chain of stages, then pooled."""

    def __init__(self, net: nn.Module, parts: list[list[str]], pool: nn.Module, num_features: int) -> None:
        super().__init__()
        self.net = net
        self._parts = parts
        self.pool = pool
        self.num_features = num_features

    def stages(self) -> list[nn.Module]:
        return [nn.Sequential(*(self.net.get_submodule(p) for p in part)) for part in self._parts]

    def stage_ends(self) -> list[str]:
        """The module ending each stage, as a path from this backbone (the feature maps explain shows)."""
        return [f"net.{part[-1]}" for part in self._parts]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages():
            x = stage(x)
        return self.pool(x)


def create_xrv_backbone(backbone: Backbone) -> XrvBackbone:
    models = xrv_models()
    if (backbone.xrv_weights or "").startswith("densenet121"):
        net = models.DenseNet(weights=None)  # torchxrayvision's architecture; its pathology classifier dropped
        net.classifier = nn.Identity()
        blocks = [[f"features.denseblock{i}", f"features.transition{i}"] for i in (1, 2, 3)]
        parts = [[f"features.{m}" for m in ("conv0", "norm0", "relu0", "pool0")], *blocks,
                 ["features.denseblock4", "features.norm5"]]  # fmt: skip
        pool = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))  # as features2: relu, mean, flatten
        return XrvBackbone(net, parts, pool, 1024)
    if (backbone.xrv_weights or "").startswith("resnet50"):
        import torchvision

        net = torchvision.models.resnet50(num_classes=len(models.DenseNet.targets), weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)  # as torchxrayvision patches it
        net.fc = nn.Identity()
        parts = [["conv1", "bn1", "relu", "maxpool"], *([f"layer{i}"] for i in range(1, 5))]
        return XrvBackbone(net, parts, nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1)), 2048)
    raise CovidxrError(f"{backbone.name}: no torchxrayvision architecture for weights {backbone.xrv_weights!r}")


def xrv_weights_url(backbone: Backbone) -> str:
    """Where torchxrayvision publishes the file (its release page), for `covidxr weights fetch`."""
    url = xrv_models().model_urls.get(backbone.xrv_weights or "", {}).get("weights_url")
    if not url:
        raise CovidxrError(f"torchxrayvision lists no weights file for {backbone.xrv_weights!r}")
    return str(url)
