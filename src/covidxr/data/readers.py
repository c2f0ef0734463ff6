"""Decode any supported X-ray file to one float grayscale array in [0, 1].

Every reader failure becomes an `ImageReadError` with a stable `problem` kind, so the data report can name
the file and the reason instead of crashing. The pixel-count limit is checked from the header, before any
pixel is decoded, so a decompression bomb costs nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from covidxr.errors import ImageReadError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
# JSRT's films (Shiraishi et al. 2000): headerless 2048 x 2048 big-endian 16-bit words holding 12-bit values,
# where 0 is white (bone) and 4095 black (air), the reverse of every other format here
JSRT_RAW = ".img"
JSRT_SIDE, JSRT_BITS = 2048, 12
DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000: above any radiograph, far below a bomb


class Problem:
    """The kinds of per-file problems the data report names."""

    MISSING = "missing"
    EMPTY = "empty file"
    CORRUPT = "corrupt or truncated"
    NOT_AN_IMAGE = "not an image"
    TOO_LARGE = "too large"
    UNREADABLE_DICOM = "unreadable DICOM"
    NO_PIXEL_DATA = "DICOM without pixel data"
    UNKNOWN_LABEL = "unknown label"


@dataclass(frozen=True)
class ImageInfo:
    """Non-anatomical facts about a file: what a shortcut detector looks at."""

    width: int
    height: int
    format: str
    bit_depth: int
    mode: str
    note: str = ""  # read, but with a caveat the data report should show (e.g. first frame of several)


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # float32, shape (H, W), values in [0, 1]
    info: ImageInfo


def has_dicom_magic(path: Path) -> bool:
    """DICOM part 10 files carry 'DICM' at byte 128 whatever their name."""
    try:
        with path.open("rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom(path: Path) -> bool:
    return path.suffix.lower() in DICOM_EXTENSIONS or has_dicom_magic(path)


def is_candidate_image(path: Path) -> bool:
    """Whether a file found while walking a folder should be read as an X-ray."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS or suffix in DICOM_EXTENSIONS or suffix == JSRT_RAW:
        return True
    return suffix == "" and has_dicom_magic(path)


def iter_image_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and the image files under folders named (sorted, hidden files left out), in order."""
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and not f.name.startswith(".") and is_candidate_image(f):
                    yield f
        else:
            yield p


def read_image(path: Path | str, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Read a PNG/JPEG/TIFF/BMP/DICOM file or a JSRT raw film (.IMG) as float32 grayscale in [0, 1], or raise
    `ImageReadError`."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, Problem.MISSING)
    if path.is_dir():
        raise ImageReadError(path, Problem.NOT_AN_IMAGE, "is a directory")
    if path.stat().st_size == 0:
        raise ImageReadError(path, Problem.EMPTY)
    if is_dicom(path):
        return _read_dicom(path, max_pixels)
    if path.suffix.lower() == JSRT_RAW:
        return _read_jsrt(path, max_pixels)
    return _read_raster(path, max_pixels)


def _read_jsrt(path: Path, max_pixels: int) -> DecodedImage:
    """A JSRT film: no header, so its size is the only check that the file is one (anything else named .IMG,
    e.g. an Analyze volume, is refused by name rather than decoded as noise)."""
    expected = JSRT_SIDE * JSRT_SIDE * 2
    size = path.stat().st_size
    if size != expected:
        raise ImageReadError(
            path, Problem.NOT_AN_IMAGE, f"{size:,} bytes; a JSRT raw film (.IMG) is {expected:,} (2048 x 2048 x 16 bit)"
        )
    _check_pixels(path, JSRT_SIDE, JSRT_SIDE, max_pixels)
    words = np.fromfile(path, dtype=">u2").reshape(JSRT_SIDE, JSRT_SIDE)
    top = 2**JSRT_BITS - 1
    if int(words.max()) > top:
        raise ImageReadError(path, Problem.CORRUPT, f"values up to {int(words.max())}; JSRT films hold 12 bits")
    pixels = (1.0 - words.astype(np.float32) / top).astype(np.float32)  # 0 = white in JSRT: turned around
    return DecodedImage(pixels, ImageInfo(JSRT_SIDE, JSRT_SIDE, "JSRT raw", JSRT_BITS, "I;16B"))


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageReadError(
            path, Problem.TOO_LARGE, f"{width}x{height} = {width * height:,} pixels > limit {max_pixels:,}"
        )


def _read_raster(path: Path, max_pixels: int) -> DecodedImage:
    try:
        with Image.open(path) as img:
            _check_pixels(path, img.width, img.height, max_pixels)  # header only: nothing decoded yet
            fmt = img.format or path.suffix.lstrip(".").upper()
            mode = img.mode
            img.load()
            pixels, bit_depth = _to_gray(ImageOps.exif_transpose(img))
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:  # only reachable when max_pixels is set above PIL's own limit
        raise ImageReadError(path, Problem.TOO_LARGE, str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, Problem.NOT_AN_IMAGE, "no known image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageReadError(path, Problem.CORRUPT, str(exc)) from exc
    height, width = pixels.shape
    return DecodedImage(pixels, ImageInfo(width, height, fmt, bit_depth, mode))


def _to_gray(img: Image.Image) -> tuple[np.ndarray, int]:
    """Convert any PIL mode to float32 gray in [0, 1]; returns the source bit depth too."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.float32) / 65535.0, 16
    if mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        bits = 16 if arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0 else 32
        return (np.clip(arr, 0, 2**bits - 1) / (2**bits - 1)).astype(np.float32), bits
    if mode == "F":
        return _min_max(np.asarray(img, dtype=np.float32)), 32
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Transparent pixels become black (the film background), not whatever colour they hide.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "L":
        img = img.convert("RGB").convert("L")  # CMYK, palette, 1-bit, YCbCr: all via RGB, ITU-R 601 luma
    return np.asarray(img, dtype=np.float32) / 255.0, 8 if mode != "1" else 1


def _min_max(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float32)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    return (arr - lo) / (hi - lo)


def _first_line(exc: Exception) -> str:
    """Decoder errors can run to many lines (one per plugin tried); the report wants one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " / ".join(lines[:3])[:300]


def read_dicom_patient_id(path: Path) -> str | None:
    """PatientID from a DICOM header, without reading pixels; None when absent or unreadable."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # any unreadable header simply has no patient id; decoding reports the file later
        return None
    value = str(getattr(ds, "PatientID", "") or "").strip()
    return value or None


def _read_dicom(path: Path, max_pixels: int) -> DecodedImage:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
    from pydicom.pixels import pixel_array as decode_pixels

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about oddities; what matters is checked below
            ds = pydicom.dcmread(path, force=True)  # force: old files without the 128-byte preamble
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise ImageReadError(path, Problem.UNREADABLE_DICOM, str(exc)) from exc
    if not any(key in ds for key in ("SOPClassUID", "Rows", "PixelData")):
        raise ImageReadError(path, Problem.UNREADABLE_DICOM, "no DICOM image attributes found")
    if "PixelData" not in ds:
        raise ImageReadError(path, Problem.NO_PIXEL_DATA)
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    _check_pixels(path, cols, rows, max_pixels)
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    try:
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        # Only the first frame is decoded; colour (RGB, YBR_*) arrives as RGB, palettes through their LUT.
        raw = decode_pixels(ds, index=0) if frames > 1 else ds.pixel_array
        if photometric == "PALETTE COLOR":
            values = apply_color_lut(raw, ds)
        elif int(getattr(ds, "SamplesPerPixel", 1) or 1) == 1:
            values = apply_voi_lut(apply_modality_lut(raw, ds), ds, index=0)
        else:
            values = raw
    except Exception as exc:  # pydicom raises many types for bad pixel data; all mean the same to a user
        raise ImageReadError(path, Problem.UNREADABLE_DICOM, f"pixel data: {_first_line(exc)}") from exc
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):  # colour DICOM (rare for CXR): ITU-R 601 luma
        arr = arr[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if arr.ndim != 2:
        raise ImageReadError(path, Problem.UNREADABLE_DICOM, f"unexpected pixel array shape {arr.shape}")
    pixels = _min_max(arr)
    if photometric == "MONOCHROME1":
        pixels = 1.0 - pixels  # MONOCHROME1: high values are dark; make bone bright as everywhere else
    bits = int(getattr(ds, "BitsStored", 0) or getattr(ds, "BitsAllocated", 8) or 8)
    note = f"multi-frame DICOM: the first of {frames} frames was used" if frames > 1 else ""
    info = ImageInfo(cols, rows, "DICOM", bits, photometric, note)
    return DecodedImage(pixels.astype(np.float32), info)
