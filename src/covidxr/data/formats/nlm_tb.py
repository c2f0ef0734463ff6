"""The NLM tuberculosis sets (Jaeger et al. 2014): Montgomery County (USA) and Shenzhen (China).

`MontgomerySet/CXR_png/MCUCXR_0001_0.png` with `ClinicalReadings/MCUCXR_0001_0.txt` and radiologist-drawn lung
masks in `ManualMask/leftMask/` and `ManualMask/rightMask/` (same file names; the lung mask is their union);
`ChinaSet_AllFiles/CXR_png/CHNCXR_0001_0.png` with `ClinicalReadings/`, and where its community lung masks are
unpacked beside it (Stirenko et al. 2018), `mask/CHNCXR_0001_0_mask.png`. The file name's last digit is the
label (0 normal, 1 tuberculosis); one film per patient. The readings' sex and age are kept as metadata.
"""

from __future__ import annotations

import re
from pathlib import Path

from covidxr.data.formats.base import DatasetFormat, child_dirs, note_extras, walk_images
from covidxr.data.manifest import LUNG_MASK, Manifest, Record, Skipped
from covidxr.data.readers import Problem
from covidxr.errors import DataError

SOURCES = {
    "MCUCXR": "Montgomery County TB control program (NLM, Jaeger et al. 2014)",
    "CHNCXR": "Shenzhen No.3 People's Hospital (NLM, Jaeger et al. 2014)",
}
LABELS = {"0": "normal", "1": "tuberculosis"}
_NAME = re.compile(r"^(MCUCXR|CHNCXR)_(\d+)_([01])$")
MASK_PARTS = ("ManualMask/leftMask", "ManualMask/rightMask")  # Montgomery's two halves of one lung mask
SHENZHEN_MASKS = "mask"
KEEP = ("CXR_png", "ClinicalReadings", "ManualMask", SHENZHEN_MASKS)


def _reading(path: Path) -> dict[str, str]:
    """Sex and age from a clinical reading ("Patient's Sex: M", "Patient's Age: 040Y"), where present."""
    meta = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("patient's sex", "patient's age"):
                meta[key.strip().lower().removeprefix("patient's ")] = value.strip()
    return meta


def _mask(root: Path, stem: str) -> str | None:
    parts = [f"{part}/{stem}.png" for part in MASK_PARTS]
    if all((root / p).is_file() for p in parts):
        return "|".join(parts)  # data.lungs.read_lung_mask: the union of the parts
    shenzhen = f"{SHENZHEN_MASKS}/{stem}_mask.png"
    return shenzhen if (root / shenzhen).is_file() else None


def load(root: Path, views: tuple[str, ...] = ()) -> Manifest:
    ignored: list[str] = []
    note_extras(root, KEEP, ignored)
    records, skipped = [], []
    for file in walk_images(root, root / "CXR_png", ignored):
        rel = file.relative_to(root).as_posix()
        m = _NAME.match(file.stem)
        if m is None:
            skipped.append(Skipped(rel, Problem.UNKNOWN_LABEL, "name is not MCUCXR_NNNN_L or CHNCXR_NNNN_L"))
            continue
        meta = _reading(root / "ClinicalReadings" / f"{file.stem}.txt")
        mask = _mask(root, file.stem)
        if mask:
            meta[LUNG_MASK] = mask
        records.append(Record(rel, LABELS[m.group(3)], f"{m.group(1)}_{m.group(2)}", SOURCES[m.group(1)], meta))
    if not records and not skipped:
        raise DataError(f"{root / 'CXR_png'}: no films")
    return Manifest(root, records, "nlm-tb", skipped=skipped, ignored=ignored)


def find(path: Path) -> Path | None:
    dirs = child_dirs(path)
    return path if "CXR_png" in dirs and "ClinicalReadings" in dirs else None


FORMAT = DatasetFormat(
    name="nlm-tb",
    title="NLM tuberculosis sets: Montgomery County and Shenzhen (Jaeger et al. 2014), lung masks where shipped",
    url="https://lhncbc.nlm.nih.gov/LHC-downloads/downloads.html#tuberculosis-image-data-sets",
    licence="public domain (NLM); cite Jaeger et al., Quant Imaging Med Surg 4(6), 2014",
    layout="<Set>/CXR_png/{MCUCXR,CHNCXR}_NNNN_L.png, ClinicalReadings/*.txt, ManualMask/{left,right}Mask/ or mask/",
    find=find,
    load=load,
)
