"""Hospital DICOM: every file pydicom ships for its own tests is either read into a sane image or skipped with
a named reason; the compressed transfer syntaxes PACS exports use are read, and read right."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from covidxr.data.readers import Problem, read_image
from covidxr.errors import ImageReadError

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
BUNDLED = sorted(TEST_FILES.glob("*.dcm"))
PROBLEMS = {v for k, v in vars(Problem).items() if not k.startswith("_")}

MUST_READ = {
    "SC_rgb_jpeg_gdcm.dcm": "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
    "JPGExtended.dcm": "JPEG Extended (Process 2 and 4)",  # 12-bit
    "MR_small_jpeg_ls_lossless.dcm": "JPEG-LS Lossless Image Compression",
    "JPEGLSNearLossless_16.dcm": "JPEG-LS Lossy (Near-Lossless) Image Compression",
    "JPEG2000.dcm": "JPEG 2000 Image Compression",
    "MR_small_jp2klossless.dcm": "JPEG 2000 Image Compression (Lossless Only)",
    "MR_small_RLE.dcm": "RLE Lossless",
    "SC_ybr_full_422_uncompressed.dcm": "Explicit VR Little Endian",
    "examples_ybr_color.dcm": "JPEG Baseline (Process 1)",  # 30 frames, YBR_FULL_422
    "SC_rgb_rle_2frame.dcm": "RLE Lossless",
}


def test_pydicom_still_bundles_the_files_these_tests_read() -> None:
    assert len(BUNDLED) > 50
    for name, syntax in MUST_READ.items():
        ds = pydicom.dcmread(TEST_FILES / name, stop_before_pixels=True)
        assert ds.file_meta.TransferSyntaxUID.name == syntax


@pytest.mark.parametrize("path", BUNDLED, ids=[p.name for p in BUNDLED])
def test_each_bundled_file_is_read_sanely_or_skipped_with_a_reason(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = read_image(path)
        except ImageReadError as exc:
            assert exc.problem in PROBLEMS and exc.path == path
            assert "\n" not in exc.detail  # one line for the data report
            assert path.name not in MUST_READ
            return
    pixels = image.pixels
    assert pixels.ndim == 2 and pixels.dtype == np.float32 and np.isfinite(pixels).all()
    assert pixels.min() >= 0 and pixels.max() <= 1
    assert pixels.shape == (image.info.height, image.info.width)


@pytest.mark.parametrize("name", sorted(MUST_READ))
def test_compressed_and_colour_files_decode(name: str) -> None:
    image = read_image(TEST_FILES / name)
    assert image.pixels.std() > 0.01  # a picture, not a constant


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"])
def test_lossless_codecs_give_exactly_the_uncompressed_pixels(name: str) -> None:
    assert np.array_equal(read_image(TEST_FILES / name).pixels, read_image(TEST_FILES / "MR_small.dcm").pixels)


def test_ybr_is_converted_like_the_same_picture_stored_as_rgb() -> None:
    rgb = read_image(TEST_FILES / "SC_rgb_dcmtk_+eb+cr.dcm").pixels  # JPEG of the picture kept in RGB
    ybr = read_image(TEST_FILES / "SC_rgb_dcmtk_+eb+cy+n1.dcm").pixels  # the same picture in YBR_FULL
    assert rgb.shape == ybr.shape and np.abs(rgb - ybr).mean() < 0.02


def test_multi_frame_gives_its_first_frame_with_a_note() -> None:
    image = read_image(TEST_FILES / "examples_ybr_color.dcm")
    assert image.pixels.shape == (240, 320)
    assert image.info.note == "multi-frame DICOM: the first of 30 frames was used"
    ds = pydicom.dcmread(TEST_FILES / "examples_ybr_color.dcm")
    first = ds.pixel_array[0].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    expected = (first - first.min()) / (first.max() - first.min())
    assert np.abs(image.pixels - expected).max() < 1e-5


def test_palette_colour_goes_through_its_lookup_table() -> None:
    image = read_image(TEST_FILES / "examples_palette.dcm")
    ds = pydicom.dcmread(TEST_FILES / "examples_palette.dcm")
    indices = ds.pixel_array.astype(np.float32)
    assert not np.allclose(image.pixels, (indices - indices.min()) / (indices.max() - indices.min()))


def test_a_data_report_lists_multi_frame_files_as_read_with_a_caveat(tmp_path: Path) -> None:
    from covidxr.data.sources import load_manifest
    from covidxr.data.validate import inspect

    for label, names in {
        "a": ["examples_ybr_color.dcm", "MR_small.dcm"],
        "b": ["JPGExtended.dcm", "CT_small.dcm"],
    }.items():
        (tmp_path / label).mkdir()
        for name in names:
            (tmp_path / label / name).write_bytes((TEST_FILES / name).read_bytes())
    _, report = inspect(load_manifest(tmp_path), task="multiclass")
    assert report.usable == 4 and report.skipped == []
    assert report.notes == [("a/examples_ybr_color.dcm", "multi-frame DICOM: the first of 30 frames was used")]
    assert "read with a caveat: 1 file(s)" in report.format_table()
