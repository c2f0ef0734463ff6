"""Audit building blocks: metadata features, the baseline's verdict, lung occlusion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from covidxr.data.lungs import LungEllipse
from covidxr.data.manifest import Record
from covidxr.evaluation.audit import FEATURE_NAMES, auc_with_ci, metadata_baseline, metadata_features
from tests.imagefiles import save, smooth_image


def test_metadata_features_read_the_original_file(tmp_path: Path) -> None:
    save(tmp_path / "a.png", smooth_image(0, 64)[:, :40])
    save(tmp_path / "b.jpg", smooth_image(1, 32))
    x = metadata_features(tmp_path, [Record("a.png", "x"), Record("b.jpg", "y")])
    assert x.shape == (2, len(FEATURE_NAMES))
    row = dict(zip(FEATURE_NAMES, x[0], strict=True))
    assert (row["width"], row["height"], row["format_PNG"]) == (40, 64, 1.0)
    assert dict(zip(FEATURE_NAMES, x[1], strict=True))["format_JPEG"] == 1.0


def test_baseline_warns_when_metadata_predicts_the_label_and_not_otherwise() -> None:
    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, len(FEATURE_NAMES)))
    groups = np.arange(n)
    quiet = metadata_baseline(x[:120], y[:120], x[120:], y[120:], groups[120:], 200)
    assert not quiet.warning and 0.3 < quiet.auc < 0.7
    x[:, 0] += y * 3  # "width" gives the label away
    loud = metadata_baseline(x[:120], y[:120], x[120:], y[120:], groups[120:], 200)
    assert loud.warning and loud.auc > 0.9 and loud.top_features[0][0] == "width"


def test_lung_occlusion_replaces_the_lungs_by_the_mean() -> None:
    from covidxr.lungs.as_seen import hide

    image = torch.rand(3, 100, 120)
    mask = LungEllipse().mask(100, 120)
    out = hide(image, mask.numpy())
    assert 0.3 < mask.float().mean() < 0.6
    assert torch.allclose(out[:, ~mask], image[:, ~mask])
    inside = out[:, mask]
    assert torch.allclose(inside, image.mean(dim=(1, 2))[:, None].expand_as(inside))


def test_auc_with_ci_without_resamples_gives_the_auc_and_no_interval() -> None:
    y, score, groups = np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]), np.array(["a", "b", "c", "d"])
    result = auc_with_ci(y, score, groups, n_resamples=0, seed=0)  # `--bootstrap 0` with the audit on
    assert result.auc == 0.75 and all(np.isnan(v) for v in result.ci)
    lo, hi = auc_with_ci(y, score, groups, n_resamples=200, seed=0).ci
    assert 0 <= lo <= 0.75 <= hi <= 1
