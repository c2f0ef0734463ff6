"""Every accepted format decodes to the right gray values; every bad file gets its named problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from covidxr.data.readers import Problem, read_image
from covidxr.errors import ImageReadError
from tests.imagefiles import gradient, png_bomb, save, write_dicom


def _problem(path: Path, **kwargs: object) -> str:
    with pytest.raises(ImageReadError) as info:
        read_image(path, **kwargs)
    assert info.value.path == path
    assert str(path) in str(info.value)
    return info.value.problem


@pytest.mark.parametrize("suffix", [".png", ".PNG", ".bmp", ".tif", ".tiff"])
def test_lossless_8bit_formats_roundtrip(tmp_path: Path, suffix: str) -> None:
    ramp = gradient()
    image = read_image(save(tmp_path / f"ramp{suffix}", ramp))
    assert image.pixels.dtype == np.float32
    np.testing.assert_allclose(image.pixels, ramp / 255.0, atol=1e-6)
    assert (image.info.width, image.info.height, image.info.bit_depth) == (48, 32, 8)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_keeps_full_precision(tmp_path: Path, suffix: str) -> None:
    ramp = gradient(maximum=65535)
    image = read_image(save(tmp_path / f"ramp16{suffix}", ramp))
    assert image.info.bit_depth == 16
    np.testing.assert_allclose(image.pixels, ramp / 65535.0, atol=1e-6)
    assert len(np.unique(image.pixels)) > 40  # not squeezed through 8 bits


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_baseline_and_progressive(tmp_path: Path, progressive: bool) -> None:
    ramp = gradient()
    path = save(tmp_path / "ramp.jpg", ramp, quality=95, progressive=progressive)
    assert Image.open(path).info.get("progressive", 0) == int(progressive)
    np.testing.assert_allclose(read_image(path).pixels, ramp / 255.0, atol=0.03)


def test_cmyk_jpeg_becomes_the_right_gray(tmp_path: Path) -> None:
    ramp = gradient()
    cmyk = Image.fromarray(ramp).convert("RGB").convert("CMYK")
    path = tmp_path / "cmyk.jpg"
    cmyk.save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    np.testing.assert_allclose(read_image(path).pixels, ramp / 255.0, atol=0.05)


def test_rgb_uses_luma_and_palette_maps_through_its_palette(tmp_path: Path) -> None:
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    assert read_image(save(tmp_path / "red.png", rgb)).pixels.mean() == pytest.approx(0.299, abs=0.01)
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    path = tmp_path / "palette.png"
    palette.save(path)
    assert Image.open(path).mode == "P"
    assert read_image(path).pixels.mean() == pytest.approx(0.299, abs=0.01)


def test_transparent_pixels_become_background_not_hidden_colour(tmp_path: Path) -> None:
    rgba = np.full((4, 4, 4), 255, np.uint8)
    rgba[:2, :, 3] = 0  # top half: white but fully transparent
    pixels = read_image(save(tmp_path / "alpha.png", rgba)).pixels
    assert pixels[:2].max() == 0.0
    assert pixels[2:].min() == 1.0


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    array = np.zeros((20, 40), np.uint8)
    array[:5, :5] = 255  # marker top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    path = save(tmp_path / "rotated.jpg", array, exif=exif, quality=95)
    image = read_image(path)
    assert image.pixels.shape == (40, 20)
    assert image.pixels[:5, -5:].mean() > 0.8  # top-left marker is now top-right


@pytest.mark.parametrize(
    ("bits", "photometric", "maximum"),
    [(8, "MONOCHROME2", 255), (12, "MONOCHROME2", 4095), (16, "MONOCHROME2", 65535), (12, "MONOCHROME1", 4095)],
)
def test_dicom_bit_depths_and_photometry(tmp_path: Path, bits: int, photometric: str, maximum: int) -> None:
    ramp = gradient(maximum=maximum)
    image = read_image(write_dicom(tmp_path / "x.dcm", ramp, bits_stored=bits, photometric=photometric))
    assert image.info.format == "DICOM" and image.info.bit_depth == bits
    row = image.pixels[0]
    increasing = np.all(np.diff(row) >= 0)
    # MONOCHROME1 stores bone dark: it must come out inverted so bone is bright like every other image.
    assert increasing == (photometric == "MONOCHROME2")
    assert row.min() == 0.0 and row.max() == 1.0


def test_dicom_voi_window_is_applied(tmp_path: Path) -> None:
    ramp = gradient(maximum=4000)
    path = write_dicom(tmp_path / "w.dcm", ramp, bits_stored=12, window=(2000, 400), rescale=(1.0, 0.0))
    row = read_image(path).pixels[0]
    # Outside the 1800..2200 window everything saturates: most of the ramp is flat black or white.
    assert np.mean(row == 0.0) > 0.3 and np.mean(row == 1.0) > 0.3


def test_dicom_without_extension_is_recognised(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "IM0001", gradient(maximum=4095), bits_stored=12)
    assert read_image(path).info.format == "DICOM"


def test_bad_files_are_named_with_their_problem(tmp_path: Path) -> None:
    assert _problem(tmp_path / "absent.png") == Problem.MISSING
    (tmp_path / "empty.png").write_bytes(b"")
    assert _problem(tmp_path / "empty.png") == Problem.EMPTY
    (tmp_path / "text.png").write_text("this is not a picture")
    assert _problem(tmp_path / "text.png") == Problem.NOT_AN_IMAGE
    good = save(tmp_path / "good.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert _problem(tmp_path / "truncated.png") == Problem.CORRUPT
    jpg = save(tmp_path / "good.jpg", gradient())
    (tmp_path / "truncated.jpg").write_bytes(jpg.read_bytes()[:200])
    assert _problem(tmp_path / "truncated.jpg") == Problem.CORRUPT
    (tmp_path / "junk.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 64)
    assert _problem(tmp_path / "junk.dcm") == Problem.UNREADABLE_DICOM
    nopix = write_dicom(tmp_path / "nopix.dcm", gradient(), bits_stored=8, pixel_data=False)
    assert _problem(nopix) == Problem.NO_PIXEL_DATA


def test_bomb_is_refused_from_the_header_without_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = png_bomb(tmp_path / "bomb.png")  # claims 10 billion pixels in a few hundred bytes
    assert bomb.stat().st_size < 2000

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert _problem(bomb) == Problem.TOO_LARGE


def test_pixel_limit_is_configurable(tmp_path: Path) -> None:
    path = save(tmp_path / "ramp.png", gradient())
    assert read_image(path, max_pixels=48 * 32).pixels.shape == (32, 48)
    assert _problem(path, max_pixels=48 * 32 - 1) == Problem.TOO_LARGE
    dicom = write_dicom(tmp_path / "big.dcm", gradient(), bits_stored=8)
    assert _problem(dicom, max_pixels=100) == Problem.TOO_LARGE
