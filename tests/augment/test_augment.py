"""Each study operation is there, does something, keeps the size; presets and offline copies behave."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from covidxr.augment.ops import OPERATIONS, build_augment
from covidxr.augment.presets import PRESETS, SEED, XRAY, XRAY_STRONG, preset
from covidxr.augment.preview import preview_grid
from covidxr.data.dataset import Preprocess, XrayDataset
from covidxr.data.labels import LabelMap
from covidxr.data.sources import load_manifest
from covidxr.errors import CovidxrError

STUDY_OPS = {
    "rotate", "shear", "zoom", "hflip", "vflip", "contrast", "rgb_shift", "hsv_shift", "grayscale", "equalize",
    "resize", "multiply", "brightness",
}  # fmt: skip
INTENSITY_OPS = {"gamma", "blur", "noise"}  # beyond the study: what differs between hospitals' machines


def _image() -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.linspace(0, 1, 64)
    img = (x[None, :] * x[:, None]).expand(3, 64, 64).clone()
    img[0] *= 0.9  # a little colour, so that colour operations have something to act on
    return img


def test_seed_preset_is_every_study_operation() -> None:
    assert set(OPERATIONS) == STUDY_OPS | INTENSITY_OPS
    assert set(SEED) == STUDY_OPS


@pytest.mark.parametrize("name", sorted(STUDY_OPS | INTENSITY_OPS))
def test_each_operation_changes_the_image_and_keeps_its_size(name: str) -> None:
    augment = build_augment({name: {**SEED.get(name, XRAY_STRONG.get(name, {})), "p": 1.0}}, 64)
    assert augment is not None
    image = _image()
    changed = False
    for seed in range(5):
        torch.manual_seed(seed)
        out = augment(image.clone())
        assert out.shape == image.shape and out.min() >= 0 and out.max() <= 1
        changed |= not torch.allclose(out, image, atol=1e-3)
    assert changed, f"{name} never changed the image"


def test_probability_zero_disables_and_bad_config_is_refused() -> None:
    assert build_augment({"rotate": {"p": 0.0}}, 64) is None
    with pytest.raises(CovidxrError, match="unknown augmentation"):
        build_augment({"sharpen": {"p": 1}}, 64)
    with pytest.raises(CovidxrError, match="probability"):
        build_augment({"rotate": {"p": 2}}, 64)
    with pytest.raises(CovidxrError, match="unknown augmentation preset"):
        preset("heavy")


def test_xray_preset_leaves_out_implausible_operations() -> None:
    assert set(XRAY) < STUDY_OPS
    assert not set(XRAY) & {"vflip", "hflip", "rgb_shift", "hsv_shift", "grayscale"}
    assert PRESETS["none"] == {}


def test_strong_intensity_preset_adds_gamma_blur_noise_and_keeps_grey_films_grey() -> None:
    assert set(XRAY_STRONG) == set(XRAY) | INTENSITY_OPS
    assert XRAY_STRONG["contrast"]["amount"] > XRAY["contrast"]["amount"]
    augment = build_augment({op: {**XRAY_STRONG[op], "p": 1.0} for op in INTENSITY_OPS | {"contrast"}}, 64)
    assert augment is not None
    grey = _image()[1:2].expand(3, 64, 64).clone()
    for seed in range(5):
        torch.manual_seed(seed)
        out = augment(grey.clone())
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])  # one noise field, one curve
    gamma = build_augment({"gamma": {"p": 1.0, "low": 2.0, "high": 2.0}}, 64)
    assert gamma is not None and torch.allclose(gamma(grey.clone()), grey**2)
    with pytest.raises(CovidxrError, match="gamma"):
        build_augment({"gamma": {"p": 1.0, "low": 0.0}}, 64)


def test_offline_copies_double_the_set_and_are_fixed(phantoms: Path) -> None:
    manifest = load_manifest(phantoms)
    records = manifest.records[:6]
    label_map = LabelMap.from_labels(manifest.labels)
    pre = Preprocess(48, (0.5,) * 3, (0.5,) * 3)
    augment = build_augment(preset("seed"), 48)
    plain = XrayDataset(manifest.root, records, label_map, pre)
    doubled = XrayDataset(manifest.root, records, label_map, pre, augment, copies=1, seed=0)
    assert len(doubled) == 12 and doubled.targets == plain.targets * 2
    assert torch.equal(doubled[2][0], plain[2][0])  # copy 0 is the original
    assert torch.equal(doubled[8][0], doubled[8][0])  # copy 1 is the same every time it is read
    assert not torch.equal(doubled[8][0], plain[2][0])
    online = XrayDataset(manifest.root, records, label_map, pre, augment, copies=0, seed=0)
    first = online[1][0]
    online.set_epoch(1)
    assert not torch.equal(online[1][0], first)  # online augmentation: fresh each epoch


def test_preview_writes_grid_and_hsv_view(phantoms: Path, tmp_path: Path) -> None:
    grid, hsv = preview_grid(load_manifest(phantoms), preset("seed"), tmp_path / "grid.png", n_images=2, size=64)
    for path in (grid, hsv):
        with Image.open(path) as img:
            assert img.width > 300 and img.height > 100


def test_config_overrides_each_operations_probability_and_range() -> None:
    ops = preset("xray", {"rotate": {"degrees": 3}, "vflip": {"p": 0.2}, "zoom": {"p": 0}})
    assert ops["rotate"] == {"p": 0.5, "degrees": 3}
    assert ops["vflip"] == {"p": 0.2} and "zoom" not in ops
