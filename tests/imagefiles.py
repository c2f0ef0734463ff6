"""Write test fixtures in every format the readers accept (nothing binary is committed)."""

from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from covidxr.data.readers import Problem


def gradient(height: int = 32, width: int = 48, maximum: int = 255) -> np.ndarray:
    """A left-to-right ramp: orientation and inversion are visible in it."""
    row = np.linspace(0, maximum, width)
    return np.tile(row, (height, 1)).round().astype(np.uint16 if maximum > 255 else np.uint8)


def save(path: Path, array: np.ndarray, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def write_dicom(
    path: Path,
    array: np.ndarray,
    bits_stored: int = 16,
    photometric: str = "MONOCHROME2",
    patient_id: str | None = "PAT-1",
    pixel_data: bool = True,
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    rle: bool = False,
) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    if patient_id:
        ds.PatientID = patient_id
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    allocated = 8 if bits_stored <= 8 else 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if pixel_data:
        ds.PixelData = array.astype(np.uint8 if allocated == 8 else np.uint16).tobytes()
        if rle:  # a compressed transfer syntax, as PACS exports often are
            from pydicom.uid import RLELossless

            ds.compress(RLELossless, encoding_plugin="pydicom")
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny file whose PNG header claims a huge image: it must be refused before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1024)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def smooth_image(seed: int, size: int = 64) -> np.ndarray:
    """A smooth random picture: structure at a coarse scale, like a radiograph and unlike white noise."""
    coarse = (np.random.default_rng(seed).random((8, 8)) * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


def mixed_folder(root: Path) -> dict[str, str]:
    """A usable set with odd formats and one broken file of each kind; returns the expected problems."""
    for i in range(4):
        save(root / "COVID-19" / f"c{i}.png", smooth_image(i))
        save(root / "normal" / f"n{i}.jpg", smooth_image(100 + i), quality=95)
    save(root / "normal" / "n16.tif", gradient(maximum=65535))
    write_dicom(root / "COVID-19" / "c.dcm", gradient(maximum=4095), bits_stored=12)
    broken = {
        "COVID-19/empty.png": Problem.EMPTY,
        "COVID-19/text.jpg": Problem.NOT_AN_IMAGE,
        "normal/cut.png": Problem.CORRUPT,
        "normal/bomb.png": Problem.TOO_LARGE,
        "normal/junk.dcm": Problem.UNREADABLE_DICOM,
        "normal/nopix.dcm": Problem.NO_PIXEL_DATA,
    }
    (root / "COVID-19" / "empty.png").write_bytes(b"")
    (root / "COVID-19" / "text.jpg").write_text("hello")
    good = (root / "COVID-19" / "c0.png").read_bytes()
    (root / "normal" / "cut.png").write_bytes(good[: len(good) // 2])
    png_bomb(root / "normal" / "bomb.png")
    (root / "normal" / "junk.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 64)
    write_dicom(root / "normal" / "nopix.dcm", gradient(), bits_stored=8, pixel_data=False)
    return broken


def flip_test_labels(phantoms: Path, splits_csv: Path, out: Path) -> Path:
    """A copy of a phantom set (images linked) whose test-split labels are swapped: what must not matter to
    anything chosen on validation."""
    test = {r["path"] for r in csv.DictReader(splits_csv.open()) if r["split"] == "test"}
    out.mkdir(parents=True)
    (out / "images").symlink_to(phantoms / "images")
    rows = list(csv.DictReader((phantoms / "labels.csv").open()))
    for r in rows:
        if r["path"] in test:
            r["label"] = "normal" if r["label"] == "COVID-19" else "COVID-19"
    with (out / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out
