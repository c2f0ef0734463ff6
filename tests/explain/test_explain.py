"""Explanations: feature-map shapes, dead filters, Grad-CAM for every head type, MC dropout, referral curve."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
import torch

from covidxr.explain.activations import dead_filters, feature_maps, stage_layers
from covidxr.explain.gradcam import grad_cam, overlay
from covidxr.explain.localisation import chance_rate, energy_inside, pointing_hit
from covidxr.explain.uncertainty import mc_dropout, referral_curve
from covidxr.models.factory import build_model, spec_for


def _net(backbone: str, classes: list[str], task: str = "binary", size: int = 64):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    spec = spec_for(backbone, classes, task, classes[-1] if task == "binary" else None, input_size=size)
    return build_model(spec, "none").eval(), spec


@pytest.mark.parametrize("backbone", ["resnet50", "tf_efficientnet_lite0", "densenet121", "simple_cnn"])
def test_feature_map_shapes_match_the_backbone(backbone: str) -> None:
    net, _ = _net(backbone, ["a", "b"])
    maps = feature_maps(net, torch.rand(3, 64, 64))
    assert list(maps) == stage_layers(net) and len(maps) >= 4
    info = getattr(net.backbone, "feature_info", None)
    if info is not None:
        for f, (name, m) in zip(info, maps.items(), strict=True):
            assert m.shape[0] == f["num_chs"], name
            assert m.shape[1] == -(-64 // f["reduction"]), name
    else:
        widths = [block[0].out_channels for block in net.backbone.blocks]
        assert [m.shape[0] for m in maps.values()] == widths
        assert [m.shape[1] for m in maps.values()] == [32, 16, 8, 4]


def test_a_layer_forced_dead_is_reported_dead() -> None:
    net, _ = _net("simple_cnn", ["a", "b"])
    conv = net.backbone.blocks[1][0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(-1.0)  # nothing can pass the ReLU after it
    rows = {(r.layer, r.kind): r for r in dead_filters(net, [torch.rand(4, 3, 64, 64)])}
    assert rows[("blocks.1.1", "activation")].fraction == 1.0
    assert rows[("blocks.1.0", "weights")].fraction == 1.0
    assert rows[("blocks.0.1", "activation")].fraction < 0.5


@pytest.mark.parametrize(
    ("backbone", "classes", "task"),
    [
        ("resnet50", ["not COVID-19", "COVID-19"], "binary"),  # the study's two sigmoid outputs
        ("tf_efficientnet_lite0", ["COVID-19", "normal", "pneumonia"], "multiclass"),
        ("simple_cnn", ["only"], "binary"),  # a single-logit head
        ("mobilenetv3_large_100", ["not COVID-19", "COVID-19"], "binary"),
    ],
)
def test_grad_cam_for_every_head_type(backbone: str, classes: list[str], task: str) -> None:
    net, spec = _net(backbone, classes, task)
    x = torch.rand(2, 3, 64, 64)
    for which in ("predicted", "positive"):
        cams = grad_cam(net, spec, x, which)
        assert cams.shape == (2, 64, 64) and np.isfinite(cams).all() and cams.min() >= 0
    gray = np.random.default_rng(0).random((90, 70)).astype(np.float32)
    assert overlay(gray, cams[0]).shape == (90, 70, 3)  # the original image's size, not the model's


def test_localisation_scores() -> None:
    mask = np.zeros((50, 50), bool)
    mask[10:20, 10:20] = True
    cam = np.zeros((25, 25))
    cam[7, 7] = 1.0  # inside the mask at half resolution
    assert pointing_hit(cam, mask, tolerance=0) and energy_inside(cam, mask) == 1.0
    cam[20, 20] = 3.0
    assert not pointing_hit(cam, mask, tolerance=0) and energy_inside(cam, mask) == pytest.approx(0.25)
    assert chance_rate(mask, tolerance=0) == pytest.approx(0.04)
    near = np.zeros((25, 25))
    near[11, 11] = 1.0  # two cells beyond the mask's corner: a hit only with tolerance
    assert not pointing_hit(near, mask, tolerance=0) and pointing_hit(near, mask, tolerance=0.15)
    assert chance_rate(mask, tolerance=0.15) > chance_rate(mask, tolerance=0)


def test_mc_dropout_varies_only_with_dropout_on() -> None:
    net, spec = _net("tf_efficientnet_lite0", ["a", "b"])
    x = torch.rand(3, 3, 64, 64)
    on = mc_dropout(net, x, spec, passes=10)
    off = mc_dropout(net, x, spec, passes=10, dropout=False)
    assert (on["std"] > 0).all() and np.allclose(off["std"], 0)
    assert on["mean"].shape == (3, 2) and (on["entropy"] >= 0).all()
    assert not any(m.training for m in net.modules())  # dropout is switched off again afterwards
    cnn, cnn_spec = _net("simple_cnn", ["a", "b"])  # dropout inside the backbone: full passes
    assert (mc_dropout(cnn, x, cnn_spec, passes=5)["std"] > 0).all()


def test_referral_curve_is_monotone_when_uncertainty_flags_the_mistakes() -> None:
    correct = np.array([True] * 80 + [False] * 20)
    uncertainty = np.where(correct, 0.1, 0.9) + np.linspace(0, 0.01, 100)
    curve = referral_curve(correct, uncertainty)
    accuracies = [a for _, a in curve]
    assert accuracies[0] == pytest.approx(0.8) and accuracies[-1] == 1.0
    assert all(b >= a for a, b in pairwise(accuracies))
