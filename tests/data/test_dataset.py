"""The Dataset decodes lazily and yields normalised 3-channel tensors of the model's input size."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from covidxr.data.dataset import Preprocess, XrayDataset
from covidxr.data.labels import LabelMap
from covidxr.data.manifest import Record
from covidxr.data.sources import load_manifest
from covidxr.errors import CovidxrError, ImageReadError


def test_items_have_model_size_three_channels_and_normalisation(phantoms: Path) -> None:
    manifest = load_manifest(phantoms)
    label_map = LabelMap.from_labels(manifest.labels)
    pre = Preprocess(64, (0.5, 0.4, 0.3), (0.25, 0.2, 0.1))
    ds = XrayDataset(manifest.root, manifest.records[:4], label_map, pre)
    x, y = ds[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert y == label_map.encode(manifest.records[0].label)
    unit = x * torch.tensor(pre.std)[:, None, None] + torch.tensor(pre.mean)[:, None, None]
    assert torch.allclose(unit[0], unit[1], atol=1e-5) and torch.allclose(unit[0], unit[2], atol=1e-5)
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5


def test_white_image_maps_to_one_minus_mean_over_std() -> None:
    pre = Preprocess(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    out = pre(np.ones((40, 30), np.float32))
    assert out.shape == (3, 16, 16)
    assert torch.allclose(out, torch.ones_like(out))


def test_augment_runs_on_unit_rgb_before_normalising() -> None:
    pre = Preprocess(8, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    seen: list[torch.Tensor] = []

    def spy(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x * 0

    out = pre(np.full((10, 10), 0.5, np.float32), augment=spy)
    assert seen[0].shape == (3, 8, 8) and torch.allclose(seen[0], torch.full_like(seen[0], 0.5), atol=1 / 255)
    assert torch.equal((seen[0] * 255).round() / 255, seen[0])  # the 8-bit film, as the film cache holds it
    assert out.abs().max() == 0


def test_nothing_is_decoded_until_an_item_is_read(tmp_path: Path) -> None:
    records = [Record(f"missing{i}.png", "normal") for i in range(1000)]
    label_map = LabelMap.from_labels(["normal", "COVID-19"])
    ds = XrayDataset(tmp_path, records, label_map, Preprocess(32, (0.5,) * 3, (0.5,) * 3))
    assert len(ds) == 1000  # built without touching a single file
    with pytest.raises(ImageReadError, match=r"missing0\.png: missing"):
        ds[0]


def test_preprocessing_against_acquisition_cues() -> None:
    from covidxr.data.dataset import Preprocess

    wide = np.tile(np.linspace(0.2, 0.8, 300, dtype=np.float32), (200, 1))  # 300 wide, 200 high
    squash = Preprocess(64, (0.5,) * 3, (0.5,) * 3)
    pad = Preprocess(64, (0.5,) * 3, (0.5,) * 3, resize="pad")
    crop = Preprocess(64, (0.5,) * 3, (0.5,) * 3, resize="crop")
    assert squash.to_unit_gray(wide).shape == (200, 300)
    padded = pad.to_unit_gray(wide)
    assert padded.shape == (300, 300) and padded[:50].max() == 0 and padded[50:250].min() > 0  # black bands
    cropped = crop.to_unit_gray(wide)
    assert cropped.shape == (200, 200) and cropped.min() > 0.2  # the sides are gone
    border = Preprocess(64, (0.5,) * 3, (0.5,) * 3, border_crop=0.1).to_unit_gray(wide)
    assert border.shape == (160, 240) and border.min() > wide.min()
    for p in (squash, pad, crop):
        assert tuple(p(wide).shape) == (3, 64, 64)


@pytest.mark.parametrize("how", ["hist", "clahe"])
def test_equalisation_spreads_a_narrow_histogram(how: str) -> None:
    from covidxr.data.dataset import Preprocess

    rng = np.random.default_rng(0)
    dull = (0.4 + 0.1 * rng.random((128, 128))).astype(np.float32)  # a low-contrast film
    out = Preprocess(64, (0.5,) * 3, (0.5,) * 3, equalize=how).to_unit_gray(dull)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1
    assert out.std() > 3 * dull.std()
    if how == "hist":
        assert np.histogram(out, bins=4, range=(0, 1))[0].min() > 0.2 * out.size  # about uniform


def test_model_spec_carries_the_preprocessing(tmp_path: Path) -> None:
    from covidxr.models.factory import spec_for
    from covidxr.models.spec import ModelSpec

    spec = spec_for("tf_efficientnet_lite0", ["not COVID-19", "COVID-19"], "binary", "COVID-19")
    replace(spec, resize="crop", border_crop=0.05, equalize="clahe").write(tmp_path)
    pre = ModelSpec.read(tmp_path).preprocess
    assert (pre.resize, pre.border_crop, pre.equalize) == ("crop", 0.05, "clahe")
    with pytest.raises(FrozenInstanceError):
        spec.input_size = 64  # type: ignore[misc]


def test_a_model_json_from_before_calibration_json_keeps_its_decision_rule(tmp_path: Path) -> None:
    import json

    from covidxr.models.factory import spec_for
    from covidxr.models.spec import ModelSpec
    from covidxr.results import RunCalibration
    from covidxr.rundir import RunDir

    spec_for("tf_efficientnet_lite0", ["not COVID-19", "COVID-19"], "binary", "COVID-19").write(tmp_path)
    old = json.loads((tmp_path / "model.json").read_text()) | {"threshold": 0.37, "temperature": 1.8, "tta": True}
    (tmp_path / "model.json").write_text(json.dumps(old))  # as evaluation wrote it before
    assert (ModelSpec.read(tmp_path).threshold, ModelSpec.read(tmp_path).temperature) == (0.37, 1.8)
    RunDir(tmp_path).write_calibration(RunCalibration(2.0, 0.6, "f1", False, "val"))  # a newer fit wins
    assert ModelSpec.read(tmp_path).calibration == RunCalibration(2.0, 0.6, "f1", False, "val")


def test_lung_box_from_the_masks_crops_every_image_alike(tmp_path: Path) -> None:
    from covidxr.data.lungs import lung_box, mask_box
    from tests.public_layouts import covid19_radiography

    mask = np.zeros((100, 200))
    mask[20:80, 50:150] = 1
    assert mask_box(mask) == (0.25, 0.2, 0.75, 0.8) and mask_box(np.zeros((4, 4))) is None
    manifest = load_manifest(covid19_radiography(tmp_path))
    box = lung_box(manifest.root, manifest.records)
    assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
    pre = Preprocess(32, (0.5,) * 3, (0.5,) * 3, lung_box=(0.25, 0.2, 0.75, 0.8))
    image = np.zeros((100, 200), dtype=np.float32)
    image[20:80, 50:150] = 1.0  # exactly the box: after the crop nothing else is left
    assert pre.to_unit_gray(image).shape == (60, 100) and pre.to_unit_gray(image).min() == 1.0
    with pytest.raises(CovidxrError, match="--lung-crop needs lung masks"):
        lung_box(manifest.root, [replace(r, meta={}) for r in manifest.records])
