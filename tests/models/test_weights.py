"""Weights: bundled ImageNet Lite0 is real, files load safely with prefix mapping, offline gaps are explained."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from skimage import data as skdata

from covidxr.errors import CovidxrError
from covidxr.models.factory import create_backbone
from covidxr.models.registry import get_backbone
from covidxr.models.weights import apply_weights, bundled_weights_file, check_weights

IMAGENET_CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
IMAGENET_COFFEE = {967, 968}  # espresso, cup


def _top1(name: str, photo: np.ndarray) -> int:
    import timm

    entry = get_backbone(name)
    model = timm.create_model(entry.timm_name, pretrained=False)  # with its ImageNet classifier
    init = apply_weights(model, entry, "imagenet")
    assert init.origin.startswith("imagenet:bundled:") and init.sha256 is not None and len(init.sha256) == 64
    size, mean, std = entry.input_config()
    x = torch.from_numpy(photo).permute(2, 0, 1).float()[None] / 255
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    with torch.no_grad():
        return int(model.eval()(x).argmax())


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_bundled_lite_weights_classify_photos_sensibly(name: str) -> None:
    assert bundled_weights_file(get_backbone(name)) is not None
    assert _top1(name, skdata.chelsea()) in IMAGENET_CATS
    assert _top1(name, skdata.coffee()) in IMAGENET_COFFEE


def test_random_init_classifies_nothing_in_particular() -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    x = torch.from_numpy(skdata.chelsea()).permute(2, 0, 1).float()[None] / 255
    x = torch.nn.functional.interpolate(x, size=(224, 224))
    with torch.no_grad():
        probs = model((x - 0.5) / 0.5).softmax(-1)
    assert probs.max() < 0.2  # the test above would be meaningless if any net found the cat


def test_missing_imagenet_weights_offline_give_the_clear_error() -> None:
    entry = get_backbone("resnet50")
    with pytest.raises(CovidxrError, match=r"no ImageNet weights for resnet50.*import.*PATH.*none"):
        apply_weights(create_backbone(entry), entry, "imagenet")
    with pytest.raises(CovidxrError, match="trained from scratch"):
        check_weights(get_backbone("simple_cnn"), "imagenet")
    with pytest.raises(CovidxrError, match="weights file not found"):
        check_weights(entry, "/nonexistent/w.safetensors")


def _reference_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return create_backbone(get_backbone("simple_cnn")).state_dict()


def test_state_dict_with_module_prefix_and_classifier_loads(tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in _reference_state().items()}
    state["module.fc.weight"] = torch.zeros(1000, 128)  # a classifier the feature extractor does not have
    torch.save(state, tmp_path / "w.pth")
    entry = get_backbone("simple_cnn")
    target = create_backbone(entry)
    init = apply_weights(target, entry, str(tmp_path / "w.pth"))
    assert init.origin.startswith("file:w.pth:") and init.sha256 is not None
    for k, v in _reference_state().items():
        assert torch.equal(target.state_dict()[k], v)


def test_safetensors_with_model_prefix_loads(tmp_path: Path) -> None:
    save_file({f"model.{k}": v.contiguous() for k, v in _reference_state().items()}, str(tmp_path / "w.safetensors"))
    entry = get_backbone("simple_cnn")
    target = create_backbone(entry)
    apply_weights(target, entry, str(tmp_path / "w.safetensors"))
    assert torch.equal(target.state_dict()["blocks.0.0.weight"], _reference_state()["blocks.0.0.weight"])


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_wrong_or_unsafe_files_are_refused(tmp_path: Path) -> None:
    entry = get_backbone("simple_cnn")
    bad = {k: torch.zeros(3) for k in _reference_state()}
    torch.save(bad, tmp_path / "shapes.pt")
    with pytest.raises(CovidxrError, match="do not fit this backbone"):
        apply_weights(create_backbone(entry), entry, str(tmp_path / "shapes.pt"))

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("code ran",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(CovidxrError, match="cannot read weights"):
        apply_weights(create_backbone(entry), entry, str(tmp_path / "evil.pt"))
