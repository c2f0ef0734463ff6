"""Every registry entry builds, runs at its own input size, and knows its normalisation and CAM layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from covidxr.errors import CovidxrError
from covidxr.models.factory import apply_freeze, build_model, spec_for
from covidxr.models.head import ClassifierHead
from covidxr.models.registry import BACKBONES, get_backbone, list_backbones
from covidxr.models.simple_cnn import SimpleCNN

STUDY = {"resnet50", "resnet152", "inception_v3", "inception_resnet_v2"}
REQUIRED = STUDY | {
    "densenet121",
    "efficientnet_b0",
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "mobilenetv3_large_100",
    "simple_cnn",
}


def test_registry_has_the_study_backbones_and_ours() -> None:
    assert set(list_backbones()) >= REQUIRED
    assert {b.name for b in BACKBONES.values() if b.study} == STUDY
    with pytest.raises(CovidxrError, match=r"unknown backbone 'vgg'.*resnet50"):
        get_backbone("vgg")


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_entry_builds_and_runs_at_its_input_size(name: str) -> None:
    spec = spec_for(name, ["not COVID-19", "COVID-19"], "binary", "COVID-19")
    expected = {"inception_v3": 299, "inception_resnet_v2": 299, "tf_efficientnet_lite1": 240}
    assert spec.input_size == expected.get(name, {"tf_efficientnet_lite2": 260}.get(name, 224))
    assert len(spec.mean) == 3 and len(spec.std) == 3 and all(s > 0 for s in spec.std)
    net = build_model(spec, "none").eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, spec.input_size, spec.input_size))
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    cam = net.backbone.get_submodule(get_backbone(name).cam_layer)
    assert any(isinstance(m, (nn.Conv2d, nn.BatchNorm2d)) for m in cam.modules())


def test_lite_and_inception_normalisation_come_from_timm() -> None:
    assert spec_for("tf_efficientnet_lite0", ["a", "b"], "binary", "b").mean == (0.5, 0.5, 0.5)
    assert spec_for("resnet50", ["a", "b"], "binary", "b").mean == pytest.approx((0.485, 0.456, 0.406))


def test_head_is_the_studys() -> None:
    head = ClassifierHead(1280, 2)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert head[0].out_features == 64 and head[2].p == 0.3 and head[3].out_features == 2
    wide = ClassifierHead(10, 3, hidden=128, dropout=0.5)
    assert wide[0].out_features == 128 and wide[2].p == 0.5 and wide[3].out_features == 3


def test_simple_cnn_puts_dropout_between_conv_and_pooling() -> None:
    cnn = SimpleCNN(widths=(8, 16, 32))
    assert len(cnn.blocks) == 3
    for block in cnn.blocks:
        assert [type(m) for m in block] == [nn.Conv2d, nn.ReLU, nn.Dropout, nn.MaxPool2d]
        assert block[2].p == 0.3
    assert cnn(torch.randn(1, 3, 64, 64)).shape == (1, 32)


def _trainable(net: nn.Module) -> set[str]:
    return {n for n, p in net.named_parameters() if p.requires_grad}


def test_freeze_policies() -> None:
    spec = spec_for("resnet50", ["a", "b"], "binary", "b", input_size=64)
    net = build_model(spec, "none")
    apply_freeze(net, "head")
    assert _trainable(net) == {n for n, _ in net.named_parameters() if n.startswith("head.")}
    net.train()
    assert all(not m.training for m in net.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert net.head.training

    apply_freeze(net, "last-k", last_k=1)
    trainable = _trainable(net)
    assert any(n.startswith("backbone.layer4.") for n in trainable)
    assert not any(n.startswith(("backbone.layer3.", "backbone.conv1")) for n in trainable)
    net.train()
    assert net.backbone.layer4[0].bn1.training and not net.backbone.layer3[0].bn1.training

    apply_freeze(net, "last-k", last_k=2)
    assert any(n.startswith("backbone.layer3.") for n in _trainable(net))
    apply_freeze(net, "full")
    assert _trainable(net) == {n for n, _ in net.named_parameters()}
    with pytest.raises(CovidxrError, match="unknown freeze policy"):
        apply_freeze(net, "some")


def test_simple_cnn_depth_and_widths_come_from_the_spec() -> None:
    spec = spec_for("simple_cnn", ["a", "b"], "binary", "b", input_size=32)
    spec.extra["cnn_widths"] = [4, 8]
    net = build_model(spec, "none")
    assert len(net.backbone.blocks) == 2 and net.head[0].in_features == 8


@pytest.mark.parametrize(("name", "k"), [("resnet50", 1), ("tf_efficientnet_lite0", 2), ("simple_cnn", 1)])
def test_trunk_and_tail_reproduce_the_backbone(name: str, k: int) -> None:
    from covidxr.models.factory import frozen_parameter_names
    from covidxr.models.trunk import split_trunk

    spec = spec_for(name, ["a", "b"], "binary", "b", input_size=64)
    net = build_model(spec, "none").eval()
    trunk, tail = split_trunk(net.backbone, k, 64)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tail(trunk(x)), net.backbone(x), atol=1e-4)
    tail_params = {id(p) for p in tail.parameters()}
    frozen = {id(net.backbone.get_parameter(n)) for n in frozen_parameter_names(net.backbone, k)}
    assert tail_params and not tail_params & frozen  # the tail is exactly the k stages last-k trains
    assert {id(p) for p in trunk.parameters()} == frozen


def test_backbones_that_are_not_a_chain_are_not_cut() -> None:
    from covidxr.models.trunk import split_trunk

    net = build_model(spec_for("inception_v3", ["a", "b"], "binary", "b", input_size=75), "none")
    assert split_trunk(net.backbone, 1, 75) is None
    lite = build_model(spec_for("simple_cnn", ["a", "b"], "binary", "b", input_size=32), "none")
    assert split_trunk(lite.backbone, 4, 32) is None  # nothing left to freeze
