"""JSRT (Shiraishi et al. 2000) with the SCR lung masks (van Ginneken et al. 2006).

`All247images/JPCLNnnn.IMG` (154 films with a lung nodule) and `JPCNNnnn.IMG` (93 without): headerless
2048 x 2048 12-bit raw films (`data.readers` decodes them). SCR draws each organ of every film as its own GIF at
1024 x 1024, in `<organ>/<film>.gif` folders ("left lung", "right lung", "heart", the clavicles), inside fold
folders of its download (`scratch/fold1/masks/left lung/JPCLN001.gif`); the lung mask is the union of the two
lungs, wherever below the set's folder SCR was unpacked. One film per patient; the clinical tables
(CLNDAT_EN.txt, CNNDAT_EN.txt) are listed as ignored. Radiologist-checked masks: the set to measure a lung
segmenter against hand-drawn outlines.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from covidxr.data.formats.base import DatasetFormat, child_dirs, note_extras, walk_images
from covidxr.data.manifest import LUNG_MASK, Manifest, Record, Skipped
from covidxr.data.readers import Problem
from covidxr.errors import DataError

IMAGES = "All247images"
SOURCE = "JSRT, 14 institutions in Japan and the USA (Shiraishi et al. 2000)"
LABELS = {"LN": "nodule", "NN": "normal"}
LUNGS = ("left lung", "right lung")  # SCR's folder names, one per lung
_NAME = re.compile(r"^JPC(LN|NN)\d{3}$")


def _scr_masks(root: Path) -> dict[str, str]:
    """Film stem -> "left|right" paths of its SCR lung masks, from every SCR organ folder below `root`."""
    halves: dict[str, dict[str, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        if here.name not in LUNGS:
            continue
        for name in filenames:
            if name.lower().endswith(".gif"):
                halves.setdefault(Path(name).stem, {})[here.name] = (here / name).relative_to(root).as_posix()
    return {stem: "|".join(sides[s] for s in LUNGS) for stem, sides in halves.items() if set(sides) == set(LUNGS)}


def _scr_folders(root: Path) -> set[str]:
    """Top-level folders holding SCR organ folders (read for masks, so not ignored)."""
    return {
        Path(dirpath).relative_to(root).parts[0]
        for dirpath, _, _ in os.walk(root)
        if Path(dirpath).name in LUNGS and Path(dirpath) != root
    }


def load(root: Path, views: tuple[str, ...] = ()) -> Manifest:
    ignored: list[str] = []
    images = root / IMAGES
    if (images / IMAGES).is_dir():  # the zip unpacks into a folder of its own name
        images = images / IMAGES
    note_extras(root, {IMAGES, *_scr_folders(root)}, ignored)
    masks = _scr_masks(root)
    records, skipped = [], []
    for file in walk_images(root, images, ignored):
        rel = file.relative_to(root).as_posix()
        m = _NAME.match(file.stem)
        if m is None or file.suffix.lower() != ".img":
            skipped.append(Skipped(rel, Problem.UNKNOWN_LABEL, "name is not JPCLNnnn.IMG or JPCNNnnn.IMG"))
            continue
        meta = {LUNG_MASK: masks[file.stem]} if file.stem in masks else {}
        records.append(Record(rel, LABELS[m.group(1)], file.stem, SOURCE, meta))
    if not records and not skipped:
        raise DataError(f"{images}: no JSRT films (JPCLNnnn.IMG, JPCNNnnn.IMG)")
    return Manifest(root, records, "jsrt", skipped=skipped, ignored=ignored)


def find(path: Path) -> Path | None:
    return path if IMAGES in child_dirs(path) else None


FORMAT = DatasetFormat(
    name="jsrt",
    title="JSRT chest films (Shiraishi et al. 2000) with the SCR lung masks (van Ginneken et al. 2006)",
    url="https://www.jsrt.or.jp/jsrt-db/eng.php",
    licence="JSRT: free for research, cite Shiraishi et al., AJR 174(1), 2000; SCR masks: cite van Ginneken et "
    "al., Med Image Anal 10(1), 2006",
    layout="All247images/JPC{LN,NN}nnn.IMG (raw 2048x2048), SCR <fold>/masks/{left,right} lung/<film>.gif",
    find=find,
    load=load,
)
